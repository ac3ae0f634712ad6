"""OpenAI request JSON → `GenerationRequest`, with OpenAI-style errors naming the offending field.

Field names and defaults follow OpenAI's completions and chat completions APIs (temperature 1, top_p 1,
max_tokens 16 unless given) plus the common extensions (top_k, min_p, repetition_penalty, ignore_eos,
min_tokens, stop_token_ids, skip_special_tokens, include_stop_str_in_output, priority, timeout).
Unknown fields are ignored, as OpenAI does; known fields this server cannot honour are refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gateway.errors import RequestError
from gateway.json_text import MAX_INT_DIGITS
from gateway.openai_tools import message_tool_fields, parse_guided, parse_tools
from gateway.schema import ChatTurn, GenerationRequest
from services.common.errors import InvalidArgument
from services.common.sampling import DEFAULT_MAX_TOKENS, SamplingParams
from services.common.text_options import TextOptions

# OpenAI's ranges, narrower than what the gRPC API accepts.
MAX_OPENAI_TEMPERATURE = 2.0
MAX_CHOICES = 128  # most choices (n) one request may ask for

# Integer ranges of the protobuf fields request values travel in (int32 unless said otherwise).
INT32 = (-2**31, 2**31 - 1)
UINT32 = (0, 2**32 - 1)


def _check_bounds(name: str, value: int, bounds: tuple[int, int]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise RequestError(f"'{name}' must be between {bounds[0]} and {bounds[1]}, got {value}", name)


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def _json_type(value: Any) -> str:
    for py, name in _JSON_TYPES:
        if isinstance(value, py):
            return name
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class OpenAIRequest:
    """A parsed OpenAI request: what to generate and how to shape the answer."""

    request: GenerationRequest
    chat: bool
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # the answer carries logprobs
    n: int = 1  # choices per prompt
    batch: tuple[GenerationRequest, ...] = ()  # completions with several prompts: one request each, in order
    include_latency: bool = False  # extension (stream_options): each choice's last chunk carries its latency

    def choice_requests(self) -> list[GenerationRequest]:
        """One request per choice, in OpenAI's order (prompt by prompt, then n per prompt). A seeded request's
        choices take seeds seed, seed + 1, ... so that they differ yet stay reproducible."""
        out = []
        for request in self.batch or (self.request,):
            seed = request.sampling.seed
            for j in range(self.n):
                if j and seed is not None:
                    sampling = dataclasses.replace(request.sampling, seed=(seed + j) % 2**63)
                    out.append(dataclasses.replace(request, sampling=sampling))
                else:
                    out.append(request)
        return out

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the output is read for tool calls (tools were given and may be called)."""
        return bool(self.request.tools) and (self.request.tool_choice != "none" or bool(self.request.forced_tool))


class _Body:
    """Typed access to the fields of one JSON object; a wrong type is a 400 naming the field."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise RequestError(f"the request body must be a JSON object, got {_json_type(body)}", None, "invalid_type")
        self.body = body

    def _get(self, name: str, ok: bool, value: Any, expected: str) -> Any:
        if not ok:
            raise RequestError(f"'{name}' must be {expected}, got {_json_type(value)}", name, "invalid_type")
        return value

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def int(self, name: str, default: int | None, bounds: tuple[int, int] | None = INT32) -> int | None:
        """An integer within `bounds`, the range of the protobuf field it travels in (None: checked later)."""
        v = self.body.get(name)
        if v is None:
            return default
        self._get(name, isinstance(v, int) and not isinstance(v, bool), v, "an integer")
        if bounds is not None:
            _check_bounds(name, v, bounds)
        return v

    def float(self, name: str, default: float) -> float:
        v = self.body.get(name)
        if v is None:
            return default
        self._get(name, isinstance(v, (int, float)) and not isinstance(v, bool), v, "a number")
        if not math.isfinite(v):
            raise RequestError(f"'{name}' must be a finite number, got {v}", name)
        return float(v)

    def bool(self, name: str, default: bool) -> bool:
        v = self.body.get(name)
        return default if v is None else self._get(name, isinstance(v, bool), v, "a boolean")

    def str(self, name: str, default: str) -> str:
        v = self.body.get(name)
        return default if v is None else self._get(name, isinstance(v, str), v, "a string")

    def int_list(self, name: str) -> tuple[int, ...]:
        v = self.body.get(name)
        if v is None:
            return ()
        ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        self._get(name, ok, v, "an array of integers")
        for x in v:
            _check_bounds(name, x, UINT32)
        return tuple(v)

    def stop(self) -> tuple[str, ...]:
        v = self.body.get("stop")
        if v is None:
            return ()
        if isinstance(v, str):
            return (v,)
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        return tuple(self._get("stop", ok, v, "a string or an array of strings"))


def _refuse_unsupported(b: _Body, chat: bool) -> None:
    n = b.int("n", 1)
    if not chat and b.int("best_of", n) != n:
        raise RequestError("'best_of' must equal 'n': this server returns every choice it generates", "best_of",
                           "unsupported_value")
    if not chat and b.str("suffix", ""):
        raise RequestError("'suffix' is not supported", "suffix", "unsupported_value")
    if not chat and b.body.get("tools"):
        raise RequestError("'tools' are only accepted on chat completions", "tools", "unsupported_value")


def _choices(b: _Body) -> int:
    n = b.int("n", 1)
    if not 1 <= n <= MAX_CHOICES:  # type: ignore[operator]
        raise RequestError(f"'n' must be between 1 and {MAX_CHOICES}, got {n}", "n")
    return n  # type: ignore[return-value]


def _logit_bias(b: _Body) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} map as (id, bias) pairs in id order."""
    v = b.body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise RequestError(f"'logit_bias' must be an object, got {_json_type(v)}", "logit_bias", "invalid_type")
    pairs = {}
    for key, bias in v.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= MAX_INT_DIGITS):
            raise RequestError(f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias")
        _check_bounds("logit_bias", int(key), UINT32)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise RequestError(f"'logit_bias' values must be numbers, got {_json_type(bias)} for token {key}",
                               "logit_bias", "invalid_type")
        pairs[int(key)] = float(bias)
    return tuple(sorted(pairs.items()))


def _openai_temperature_and_top_p(b: _Body) -> tuple[float, float, bool]:
    """(temperature, top_p, greedy) within OpenAI's ranges, narrower than the gRPC API's. top_p 0 keeps only the
    best token, which is greedy decoding (the sampler needs top_p > 0)."""
    temperature = b.float("temperature", 1.0)
    if not 0.0 <= temperature <= MAX_OPENAI_TEMPERATURE:
        raise RequestError(f"'temperature' must be between 0 and 2, got {temperature:g}", "temperature")
    top_p = b.float("top_p", 1.0)
    if not 0.0 <= top_p <= 1.0:
        raise RequestError(f"'top_p' must be between 0 and 1, got {top_p:g}", "top_p")
    return temperature, top_p or 1.0, top_p == 0.0


def _sampling(b: _Body, chat: bool) -> tuple[SamplingParams, bool]:
    """SamplingParams from the OpenAI fields, and whether logprobs were asked for."""
    max_name = "max_completion_tokens" if chat and b.has("max_completion_tokens") else "max_tokens"
    # As in OpenAI's API, a chat without a limit runs until the model stops or the context is full.
    fill_context = chat and not b.has(max_name)
    max_tokens = b.int(max_name, DEFAULT_MAX_TOKENS)
    if chat:
        want_logprobs = b.bool("logprobs", False)
        top = b.int("top_logprobs", None)
        if top is not None and not want_logprobs:
            raise RequestError("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        logprobs, logprobs_name = (top or 0, "top_logprobs") if want_logprobs else (None, "top_logprobs")
    else:
        logprobs, logprobs_name = b.int("logprobs", None), "logprobs"
    top_k = b.int("top_k", 0)
    temperature, top_p, top_p_greedy = _openai_temperature_and_top_p(b)
    if top_p_greedy:
        top_k = 1
    seed = b.int("seed", None, None)  # SamplingParams checks [0, 2**63)
    names = {"max_tokens": max_name, "logprobs": logprobs_name}
    try:
        params = SamplingParams(
            max_tokens=max_tokens,  # type: ignore[arg-type]
            min_tokens=b.int("min_tokens", 0),  # type: ignore[arg-type]
            temperature=temperature,
            top_k=0 if top_k == -1 else top_k,  # type: ignore[arg-type]  # -1 also means off
            top_p=top_p,
            min_p=b.float("min_p", 0.0),
            repetition_penalty=b.float("repetition_penalty", 1.0),
            presence_penalty=b.float("presence_penalty", 0.0),
            frequency_penalty=b.float("frequency_penalty", 0.0),
            seed=seed,
            stop_token_ids=b.int_list("stop_token_ids"),
            ignore_eos=b.bool("ignore_eos", False),
            logprobs=logprobs,
            logit_bias=_logit_bias(b),
            guided=parse_guided(b.body),
            fill_context=fill_context,
        )
        params.validate()
    except RequestError:
        raise
    except InvalidArgument as exc:  # SamplingParams names the field first in its message
        field = exc.message.split(" ", 1)[0]
        raise RequestError(exc.message, names.get(field, field)) from exc
    return params, logprobs is not None


Prompt = tuple[str | None, tuple[int, ...] | None]  # (text, None) or (None, token ids)


def _one_prompt(v: Any) -> Prompt | None:
    if isinstance(v, str):
        return v, None
    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return None, tuple(v)
    return None


def _prompts(body: dict[str, Any]) -> list[Prompt]:
    """The prompts of a completions request: a string, token ids, or an array of either (a batch)."""
    v = body.get("prompt")
    if v is None:
        raise RequestError("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(v, list) and v and isinstance(v[0], (str, list)):
        if len(v) > MAX_CHOICES:
            raise RequestError(f"'prompt' may hold at most {MAX_CHOICES} prompts, got {len(v)}", "prompt")
        prompts = [_one_prompt(x) for x in v]
    else:
        prompts = [_one_prompt(v)]
    if any(p is None for p in prompts):
        raise RequestError(f"'prompt' must be a string, an array of token ids, or an array of either, got "
                           f"{_json_type(v)}", "prompt", "invalid_type")
    return prompts  # type: ignore[return-value]


def _content(i: int, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"messages[{i}].content[{j}] must be a text part; only text is supported",
                                   f"messages[{i}].content", "unsupported_value")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"messages[{i}].content must be a string or an array of text parts, got "
                       f"{_json_type(content)}", f"messages[{i}].content", "invalid_type")


def _messages(body: dict[str, Any]) -> tuple[ChatTurn, ...]:
    v = body.get("messages")
    if v is None:
        raise RequestError("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(v, list):
        raise RequestError(f"'messages' must be an array, got {_json_type(v)}", "messages", "invalid_type")
    turns = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]",
                               "invalid_type")
        role = "system" if m["role"] == "developer" else m["role"]
        if m.get("content") is None and role != "assistant":  # an assistant turn may carry tool calls alone
            raise RequestError(f"messages[{i}].content is required", f"messages[{i}].content",
                               "missing_required_parameter")
        turns.append(ChatTurn(role, _content(i, m.get("content")), **message_tool_fields(i, m)))
    return tuple(turns)


def parse_openai_request(body: Any, chat: bool) -> OpenAIRequest:
    """Parses a /v1/completions (chat=False) or /v1/chat/completions body; raises RequestError."""
    b = _Body(body)
    _refuse_unsupported(b, chat)
    n = _choices(b)
    model = b.str("model", "")
    stream = b.bool("stream", False)
    include_usage = include_latency = False
    if b.has("stream_options"):
        opts = b.body["stream_options"]
        if not stream:
            raise RequestError("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(opts, dict):
            raise RequestError(f"'stream_options' must be an object, got {_json_type(opts)}", "stream_options",
                               "invalid_type")
        include_usage = _Body(opts).bool("include_usage", False)
        include_latency = _Body(opts).bool("include_latency", False)
    b.str("user", "")  # accepted for OpenAI compatibility; only its type is checked
    sampling, logprobs = _sampling(b, chat)
    echo = False if chat else b.bool("echo", False)
    if echo and logprobs:
        raise RequestError("'echo' together with 'logprobs' is not supported", "echo", "unsupported_value")
    options = TextOptions(
        stop=b.stop(),
        include_stop_str_in_output=b.bool("include_stop_str_in_output", False),
        skip_special_tokens=b.bool("skip_special_tokens", True),
        add_special_tokens=b.bool("add_special_tokens", not chat),
        echo_prompt=echo,
    )
    common: dict[str, Any] = {
        "model": model,
        "sampling": sampling,
        "options": options,
        "priority": b.int("priority", 0),
        "timeout_s": b.float("timeout", 0.0),
        "bypass_cache": not b.bool("cache", True),  # extension: "cache": false skips the result cache
    }
    if chat:
        request = GenerationRequest(
            messages=_messages(b.body), add_generation_prompt=b.bool("add_generation_prompt", True),
            **parse_tools(b.body), **common
        )
        return OpenAIRequest(request, chat, stream, include_usage, logprobs, n, include_latency=include_latency)
    batch = tuple(GenerationRequest(prompt=prompt, token_ids=token_ids, **common)
                  for prompt, token_ids in _prompts(b.body))
    return OpenAIRequest(batch[0], chat, stream, include_usage, logprobs, n, batch if len(batch) > 1 else (),
                         include_latency=include_latency)
