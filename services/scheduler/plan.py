"""Plain dataclasses the core exchanges with the outside: requests in, step plans out to a worker, step results
back, per-request events up. The servicer and worker pool convert them to and from protobuf (see pb.py)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import ErrorCode
from services.common.sampling import SamplingParams
from services.common.finish_reason import FinishReason


@dataclass(frozen=True, slots=True)
class Request:
    """A new request, as received upstream (the key must be unique among live requests)."""

    key: Hashable
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    priority: int = 0
    deadline: float = 0.0  # wall-clock seconds; 0 means none
    traceparent: str = ""  # W3C trace context of the request's scheduler span; "" when not traced


# ---- scheduler -> worker ----


@dataclass(slots=True)
class NewSeq:
    seq_id: int
    token_ids: list[int]  # every known token: the prompt, then tokens generated before a preemption
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]  # the whole block table
    num_computed_tokens: int  # tokens whose KV is already in those blocks (prefix hit)
    num_scheduled_tokens: int  # tokens to run this step, from num_computed_tokens on
    traceparent: str = ""  # the request's scheduler span, parent of the worker's span


@dataclass(slots=True)
class CachedSeq:
    seq_id: int
    new_block_ids: list[int]  # blocks appended to its table since the last plan
    num_scheduled_tokens: int


@dataclass(slots=True)
class StepPlan:
    step_id: int
    new_seqs: list[NewSeq] = field(default_factory=list)
    cached_seqs: list[CachedSeq] = field(default_factory=list)
    finished_seq_ids: list[int] = field(default_factory=list)  # forget these before running the step

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(s.num_scheduled_tokens for s in self.new_seqs) + sum(
            s.num_scheduled_tokens for s in self.cached_seqs
        )


# ---- worker -> scheduler ----


@dataclass(slots=True)
class SeqOutput:
    seq_id: int
    token_id: int
    logprob: Any = None  # opaque to the core (a flashstream.v1.TokenLogprob), passed through upstream


@dataclass(slots=True)
class SeqError:
    seq_id: int
    code: ErrorCode
    message: str


@dataclass(slots=True)
class StepResult:
    step_id: int
    outputs: list[SeqOutput] = field(default_factory=list)
    errors: list[SeqError] = field(default_factory=list)
    step_time_s: float = 0.0


# ---- scheduler -> upstream, per request ----


@dataclass(slots=True)
class TokenChunk:
    key: Hashable
    token_ids: list[int]
    logprobs: list[Any] = field(default_factory=list)
    num_cached_tokens: int = 0  # set on a request's first chunk


@dataclass(slots=True)
class RequestDone:
    key: Hashable
    finish_reason: FinishReason
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    num_cached_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(slots=True)
class RequestError:
    key: Hashable
    code: ErrorCode
    message: str


Event = TokenChunk | RequestDone | RequestError
