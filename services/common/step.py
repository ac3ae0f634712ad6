"""The scheduler-worker hop (Worker.Step) as plain data, one type per message for both sides.

The scheduler builds a StepPlan and reads a StepResult; the worker reads the plan and builds the result. The
plan carries deltas: a sequence travels whole once (NewSeq), afterwards only its new blocks and how many tokens
to run (a row of CachedSeqs). Conversions to and from protobuf live in each side's pb.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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
class CachedSeqs:
    """Sequences the worker holds, one column per field (as on the wire): sequence seq_ids[i] appends the next
    num_new_blocks[i] ids of new_block_ids (the blocks it got since the last plan) to its block table and runs
    num_scheduled_tokens[i] tokens. Columns, not an object per sequence: they are most of a busy step's rows, and
    the scheduler, the wire and the worker would each pay per object."""

    seq_ids: list[int] = field(default_factory=list)
    num_scheduled_tokens: list[int] = field(default_factory=list)
    num_new_blocks: list[int] = field(default_factory=list)
    new_block_ids: list[int] = field(default_factory=list)  # every sequence's new blocks, concatenated in order

    @classmethod
    def of(cls, rows: Iterable[tuple[int, Sequence[int], int]]) -> CachedSeqs:
        """From (seq_id, new_block_ids, num_scheduled_tokens) rows."""
        columns = cls()
        for seq_id, new_block_ids, num_scheduled_tokens in rows:
            columns.append(seq_id, num_scheduled_tokens, new_block_ids)
        return columns

    def __len__(self) -> int:
        return len(self.seq_ids)

    def append(self, seq_id: int, num_scheduled_tokens: int, new_block_ids: Sequence[int] = ()) -> None:
        self.seq_ids.append(seq_id)
        self.num_scheduled_tokens.append(num_scheduled_tokens)
        self.num_new_blocks.append(len(new_block_ids))
        self.new_block_ids.extend(new_block_ids)

    def rows(self) -> Iterator[tuple[int, list[int], int]]:
        """(seq_id, new_block_ids, num_scheduled_tokens) of each sequence, in order."""
        blocks, end = self.new_block_ids, 0
        for seq_id, num_new, num_scheduled in zip(self.seq_ids, self.num_new_blocks, self.num_scheduled_tokens,
                                                  strict=True):
            end += num_new
            yield seq_id, blocks[end - num_new:end], num_scheduled


@dataclass(slots=True)
class StepPlan:
    step_id: int
    new_seqs: list[NewSeq] = field(default_factory=list)
    cached_seqs: CachedSeqs = field(default_factory=CachedSeqs)
    finished_seq_ids: list[int] = field(default_factory=list)  # forgotten before the step runs

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(s.num_scheduled_tokens for s in self.new_seqs) + sum(self.cached_seqs.num_scheduled_tokens)


# ---- worker -> scheduler ----


@dataclass(slots=True)
class TokenLogprobs:
    """The chosen token's log probability and the best alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first, as many as the request asked for


@dataclass(slots=True)
class SampledTokens:
    """What a step sampled, one column per field (as on the wire): sequence seq_ids[i] sampled token_ids[i], with
    logprobs[i] (None unless its request asked for logprobs). A sequence samples when its step reaches the end of
    its known tokens. Columns, not an object per sequence: a busy step has a thousand rows, and every stage that
    touches them pays per object."""

    seq_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq_ids)

    def rows(self) -> Iterator[tuple[int, int, TokenLogprobs | None]]:
        """(seq_id, token_id, logprobs) of each row, in order."""
        return zip(self.seq_ids, self.token_ids, self.logprobs, strict=True)

    def append(self, seq_id: int, token_id: int, logprobs: TokenLogprobs | None = None) -> None:
        self.seq_ids.append(seq_id)
        self.token_ids.append(token_id)
        self.logprobs.append(logprobs)


@dataclass(slots=True)
class SeqError:
    """A failure confined to one sequence; the worker forgets the sequence, the scheduler ends its request."""

    seq_id: int
    error: FlashStreamError


@dataclass(slots=True)
class StepResult:
    step_id: int
    sampled: SampledTokens = field(default_factory=SampledTokens)
    errors: list[SeqError] = field(default_factory=list)
    step_time_s: float = 0.0
