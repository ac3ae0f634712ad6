"""Plain-data forms of the Worker.Step messages (the core never sees protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.common.errors import FlashStreamError
from services.common.sampling import SamplingParams

if TYPE_CHECKING:
    from services.worker.sampler import TokenLogprobs


@dataclass(slots=True)
class NewSeq:
    """A sequence sent whole: every known token, its block table and what to run now."""

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int  # tokens whose KV is already in block_ids (prefix-cache hit)
    num_scheduled_tokens: int
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


@dataclass(slots=True)
class SeqOutput:
    """The token sampled for a sequence whose step reached the end of its known tokens."""

    seq_id: int
    token_id: int
    logprobs: TokenLogprobs | None = None


@dataclass(slots=True)
class SeqError:
    """A failure confined to one sequence; the worker forgets the sequence."""

    seq_id: int
    error: FlashStreamError


@dataclass(slots=True)
class StepResult:
    step_id: int
    outputs: list[SeqOutput] = field(default_factory=list)
    errors: list[SeqError] = field(default_factory=list)
    step_time_s: float = 0.0
