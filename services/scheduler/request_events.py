"""Plain dataclasses the core exchanges upstream: requests in; out, each step's new tokens and each request's end.
The servicer converts them to and from protobuf (see pb.py); the plans and results of the worker hop are in
services/common/step.py."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

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


# ---- scheduler -> upstream ----


@dataclass(slots=True)
class NewTokens:
    """Tokens that requests generated in one step, one column per field: keys[i]'s request got token_ids[i], with
    logprobs[i] where it asked for logprobs (else None). A stop token that ends a request is not one. One event per
    step rather than per token: a busy step has a thousand, and each stage they cross would pay per object; a
    request's tokens still come before its end, which follows in a later event."""

    keys: list[Hashable] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, key: Hashable, token_id: int, logprobs: TokenLogprobs | None = None) -> None:
        self.keys.append(key)
        self.token_ids.append(token_id)
        self.logprobs.append(logprobs)

    def rows(self) -> Iterator[tuple[Hashable, int, TokenLogprobs | None]]:
        """(key, token_id, logprobs) of each token, in order."""
        return zip(self.keys, self.token_ids, self.logprobs, strict=True)


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


Event = NewTokens | RequestDone | RequestFailed
