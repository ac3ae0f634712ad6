"""New text requests → validated token requests: render chats, encode in batches, check lengths.

This is where a prompt's tokens first exist, so the checks that need them live here and nowhere else: the prompt
within the vocabulary (`TextTokenizer.check_token_ids`) and prompt plus max_tokens within the context
(`fit_context`, which also turns `fill_context` into a number). Sampling arrives validated by the gateway and
is not checked again; the scheduler and the worker trust what this stage sends.

`prepare_batch` runs in a thread of the encode pool. It encodes every prompt of one chunk of an upstream
message (the servicer splits a message into chunks of `ENCODE_CHUNK`) with a single `encode_batch` call, which
runs in the `tokenizers` library without holding the GIL, so the event loop keeps streaming while a long prompt
is encoded (a plain `encode` holds the GIL: measured in bench/tokenizer.py). Each request's failure is its own:
the result list holds either a `PreparedRequest` or the `FlashStreamError` that refused it.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument, Unavailable
from services.common.sampling import SamplingParams
from services.common.text_options import TextOptions
from services.tokenizer.tokenizer import TextTokenizer
from services.tokenizer.tools import ToolRequest


@dataclass(slots=True)
class TextInput:
    """One new request as the tokenizer stage receives it (exactly one of prompt, messages, token_ids)."""

    request_id: str
    sampling: SamplingParams
    options: TextOptions = field(default_factory=TextOptions)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    tools: ToolRequest = field(default_factory=ToolRequest)  # chat only
    token_ids: list[int] | None = None
    priority: int = 0
    deadline_unix_s: float = 0.0
    arrival_unix_s: float = 0.0
    gateway_s: float = 0.0
    traceparent: str = ""  # W3C trace context of the request's gateway span
    received_s: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class PreparedRequest:
    """A request ready for the scheduler."""

    input: TextInput
    prompt_token_ids: list[int]
    prompt_text: str  # the text the prompt ids stand for (rendered chat, plain prompt or decoded ids)
    tokenizer_s: float


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What the scheduler's Info says of the model: its context and vocabulary (0: not known yet)."""

    max_model_len: int = 0
    vocab_size: int = 0


def fit_context(request: TextInput, num_tokens: int, max_model_len: int) -> None:
    """The one check of a prompt's length against the context; a request that fills the context gets
    max_tokens = what its prompt leaves, and leaves here with `fill_context` cleared."""
    rid, sampling = request.request_id, request.sampling
    if num_tokens == 0:
        raise InvalidArgument(f"request {rid!r}: the prompt is empty")
    if sampling.fill_context:
        if not max_model_len:
            raise Unavailable(f"request {rid!r}: the model's context length is not known yet; retry shortly")
        room = max_model_len - num_tokens
        if room < 1:
            raise InvalidArgument(
                f"request {rid!r}: the prompt ({num_tokens} tokens) leaves no room in the "
                f"model's context of {max_model_len} tokens")
        if room < sampling.min_tokens:
            raise InvalidArgument(
                f"request {rid!r}: the prompt ({num_tokens} tokens) leaves {room} tokens of the model's context "
                f"of {max_model_len} tokens, fewer than min_tokens ({sampling.min_tokens})")
        request.sampling = replace(sampling, max_tokens=room, fill_context=False)
    elif max_model_len and num_tokens + sampling.max_tokens > max_model_len:
        raise InvalidArgument(
            f"request {rid!r}: prompt ({num_tokens} tokens) plus max_tokens "
            f"({sampling.max_tokens}) exceeds the model's context of {max_model_len} tokens"
        )


def _check_text_size(tokenizer: TextTokenizer, request: TextInput, text: str, max_model_len: int) -> None:
    """Refuses, before encoding it, a text too long to fit the context whatever its tokens: encoding megabytes
    only to refuse them costs time and leaves the encoder's memory grown."""
    limit = tokenizer.max_prompt_chars(max_model_len) if max_model_len else None
    if limit is not None and len(text) > limit:
        raise InvalidArgument(
            f"request {request.request_id!r}: the prompt ({len(text)} characters) cannot fit the model's context "
            f"of {max_model_len} tokens (a token covers at most {tokenizer.max_chars_per_token} characters)")


def _without_traceback(exc: FlashStreamError) -> FlashStreamError:
    """A refusal kept as a result, without its traceback: that holds prepare_batch's frame, and through it the
    batch's prompts and the result list that holds the refusal, a cycle only the garbage collector frees, which
    can be many bursts later (a stage refusing multi-MB prompts grew by them until it did)."""
    return exc.with_traceback(None)


def prepare_batch(
    tokenizer: TextTokenizer, requests: Sequence[TextInput], limits: ModelLimits
) -> list[PreparedRequest | FlashStreamError]:
    """Renders, encodes and validates a batch of requests; one result per request, in order."""
    max_model_len = limits.max_model_len
    # Ids this tokenizer encodes are within its own vocabulary; the model's may be smaller.
    model_vocab_smaller = 0 < limits.vocab_size < tokenizer.vocab_size
    results: list[PreparedRequest | FlashStreamError | None] = [None] * len(requests)
    texts: dict[bool, list[tuple[int, str]]] = {True: [], False: []}  # add_special_tokens → (index, text)
    for i, req in enumerate(requests):
        try:
            if req.token_ids is not None:
                tokenizer.check_token_ids(req.token_ids, limits.vocab_size)
                fit_context(req, len(req.token_ids), max_model_len)
                text = tokenizer.decode(req.token_ids) if req.options.echo_prompt else ""
                results[i] = PreparedRequest(req, list(req.token_ids), text, time.perf_counter() - req.received_s)
            elif req.messages is not None:
                prompt = tokenizer.render_chat(req.messages, req.add_generation_prompt, req.tools.template_tools)
                req.sampling = req.tools.constrain(req.sampling, tokenizer.tool_call_format)
                _check_text_size(tokenizer, req, prompt, max_model_len)
                texts[False].append((i, prompt))
            elif req.prompt:
                _check_text_size(tokenizer, req, req.prompt, max_model_len)
                texts[req.options.add_special_tokens].append((i, req.prompt))
            else:  # the gateway refuses an empty prompt
                raise FlashStreamError(f"request {req.request_id!r} came with an empty prompt, which the gateway "
                                       "refuses", ErrorCode.INTERNAL)
        except FlashStreamError as exc:
            results[i] = _without_traceback(exc)
    for add_special, items in texts.items():
        if not items:
            continue
        encoded = tokenizer.encode_batch([text for _, text in items], add_special_tokens=add_special)
        for (i, text), ids in zip(items, encoded):
            req = requests[i]
            try:
                if model_vocab_smaller:
                    tokenizer.check_token_ids(ids, limits.vocab_size)
                fit_context(req, len(ids), max_model_len)
                results[i] = PreparedRequest(req, ids, text, time.perf_counter() - req.received_s)
            except FlashStreamError as exc:
                results[i] = _without_traceback(exc)
    return [r for r in results if r is not None]


class EncodePool:
    """Threads that render and encode off the event loop (the tokenizers library releases the GIL)."""

    def __init__(self, tokenizer: TextTokenizer, num_workers: int = 2) -> None:
        if num_workers < 1:
            raise InvalidArgument(f"encode workers must be at least 1, got {num_workers}")
        self.tokenizer = tokenizer
        self._pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="encode")

    def prepare(self, requests: Sequence[TextInput], limits: ModelLimits) -> concurrent.futures.Future:
        return self._pool.submit(prepare_batch, self.tokenizer, list(requests), limits)

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
