"""Plain dataclasses the core exchanges upstream: requests in, per-request events out. The servicer converts them
to and from protobuf (see pb.py); the plans and results of the worker hop are in services/common/step.py."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from services.common.errors import ErrorCode
from services.common.finish_reason import FinishReason
from services.common.sampling import SamplingParams
from services.common.step import TokenLogprobs


@dataclass(frozen=True, slots=True)
class Request:
    """A new request, as received upstream (the key must be unique among live requests)."""

    key: Hashable
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    priority: int = 0
    deadline: float = 0.0  # wall-clock seconds; 0 means none
    traceparent: str = ""  # W3C trace context of the request's scheduler span; "" when not traced


# ---- scheduler -> upstream, per request ----


@dataclass(slots=True)
class NewToken:
    """A token a request generated (a stop token that ends it is not one)."""

    key: Hashable
    token_id: int
    logprobs: TokenLogprobs | None = None  # when the request asked for logprobs


@dataclass(slots=True)
class RequestDone:
    """A request's terminal event when it ended normally."""

    key: Hashable
    finish_reason: FinishReason
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    num_cached_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(slots=True)
class RequestFailed:
    """A request's terminal event when it ended with an error (its batch-mates carry on)."""

    key: Hashable
    code: ErrorCode
    message: str


Event = NewToken | RequestDone | RequestFailed
