"""The scheduler-worker hop (Worker.Step) as plain data, one type per message for both sides.

The scheduler builds a StepPlan and reads a StepResult; the worker reads the plan and builds the result. The
plan carries deltas: a sequence travels whole once (NewSeq), afterwards only its new blocks and how many tokens
to run (CachedSeq). Conversions to and from protobuf live in each side's pb.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import FlashStreamError
from services.common.sampling import SamplingParams

# ---- scheduler -> worker ----


@dataclass(slots=True)
class NewSeq:
    """A sequence sent whole: every known token, its block table and what to run now."""

    seq_id: int
    token_ids: list[int]  # every known token: the prompt, then tokens generated before a preemption
    num_prompt_tokens: int
    sampling: SamplingParams
    block_ids: list[int]  # the whole block table
    num_computed_tokens: int  # tokens whose KV is already in block_ids (prefix-cache hit)
    num_scheduled_tokens: int  # tokens to run this step, from num_computed_tokens on
    traceparent: str = ""  # W3C trace context of the request's scheduler span; "" when not traced


@dataclass(slots=True)
class CachedSeq:
    """A sequence the worker holds: the blocks appended since the last plan and what to run now."""

    seq_id: int
    new_block_ids: list[int]
    num_scheduled_tokens: int


@dataclass(slots=True)
class StepPlan:
    step_id: int
    new_seqs: list[NewSeq] = field(default_factory=list)
    cached_seqs: list[CachedSeq] = field(default_factory=list)
    finished_seq_ids: list[int] = field(default_factory=list)  # forgotten before the step runs

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(s.num_scheduled_tokens for s in self.new_seqs) + sum(
            s.num_scheduled_tokens for s in self.cached_seqs
        )


# ---- worker -> scheduler ----


@dataclass(slots=True)
class TokenLogprobs:
    """The chosen token's log probability and the best alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first, as many as the request asked for


@dataclass(slots=True)
class SeqOutput:
    """The token sampled for a sequence whose step reached the end of its known tokens."""

    seq_id: int
    token_id: int
    logprobs: TokenLogprobs | None = None  # None unless the request asked for logprobs


@dataclass(slots=True)
class SeqError:
    """A failure confined to one sequence; the worker forgets the sequence, the scheduler ends its request."""

    seq_id: int
    error: FlashStreamError


@dataclass(slots=True)
class StepResult:
    step_id: int
    outputs: list[SeqOutput] = field(default_factory=list)
    errors: list[SeqError] = field(default_factory=list)
    step_time_s: float = 0.0
