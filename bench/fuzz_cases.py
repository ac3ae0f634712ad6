"""Hostile requests for the public API, as hypothesis strategies, and the judge of each answer.

HTTP cases are JSON bodies for /v1/completions, /v1/chat/completions and /v1/embeddings built over the
request schema: each known field is absent or valid, and up to two are hostile (wrong type, out of range for its protobuf field,
NaN, lone surrogates, deep nesting, huge numbers), beside raw hostile bodies (not JSON, not UTF-8, truncated,
nested a thousand deep). gRPC cases are Generate, Chat, Translate and Embed messages with every field drawn over
its protobuf type, and bytes that are not a message at all.

A case passes when its answer is a success or a client error: HTTP 200/400/404/413/415/422, gRPC OK,
INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED; a stream that started must not end in a server error.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from flashstream.v1 import gateway_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MODEL = "flashstream-demo"
HTTP_OK = frozenset({200, 400, 404, 413, 415, 422})
GRPC_OK = frozenset({grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.RESOURCE_EXHAUSTED})
MIN_TIMEOUT_S = 60.0  # valid timeouts are at least this long: a request that runs out of time is not malformed

# ---- HTTP ----

_HUGE_INTS = [-1, 0, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30)]
_LONE = ["\ud800", "a\udc00b", "\udfff"]


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


_hostile_scalar = st.one_of(
    st.sampled_from(_HUGE_INTS), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_LONE), st.text(max_size=40), st.booleans(), st.none(),
)
_json_value = st.recursive(_hostile_scalar, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
hostile_value = st.one_of(_json_value, st.sampled_from([_nested(80), _nested(30), "x" * 10_000]))


def _field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field's valid values (_body spoils some fields with hostile ones)."""
    return valid


_text = st.text(max_size=60) | st.sampled_from(["Once upon a time", "流 🎉", "the cache"])
_small_int = st.integers(1, 8)
_prob = st.floats(0, 1)
_schema = st.sampled_from([{"type": "object"}, {"type": "object", "properties": {"a": {"type": "integer"}}},
                           {"type": "nonsense"}, {"required": "a"}, {"type": "string", "pattern": "(("}])
_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": _field(st.sampled_from(["f", "g"]))}, optional={"parameters": _field(_schema)})})

_COMMON = {
    "model": _field(st.sampled_from([MODEL, MODEL, "", "no-such-model"])),
    "max_tokens": _field(_small_int),
    "temperature": _field(st.floats(0, 2)),
    "top_p": _field(_prob),
    "top_k": _field(st.integers(-1, 50)),
    "min_p": _field(_prob),
    "n": _field(st.integers(1, 3)),
    "stream": _field(st.booleans()),
    "stream_options": _field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "stop": _field(st.lists(_text, max_size=3) | _text),
    "stop_token_ids": _field(st.lists(st.integers(0, 1100), max_size=3)),
    "seed": _field(st.integers(0, 2**63 - 1)),
    "logit_bias": _field(st.dictionaries(st.integers(0, 1100).map(str), st.floats(-100, 100), max_size=3)),
    "presence_penalty": _field(st.floats(-2, 2)),
    "frequency_penalty": _field(st.floats(-2, 2)),
    "repetition_penalty": _field(st.floats(0.5, 2)),
    "min_tokens": _field(st.integers(0, 4)),
    "ignore_eos": _field(st.booleans()),
    "priority": _field(st.integers(-10, 10)),
    "timeout": _field(st.floats(MIN_TIMEOUT_S, 600)),
    "response_format": _field(st.sampled_from([{"type": "text"}, {"type": "json_object"}])
                              | _schema.map(lambda s: {"type": "json_schema", "json_schema": {"schema": s}})),
    "guided_regex": _field(st.sampled_from(["[a-z]+", "((", "a{2,3}"])),
    "guided_grammar": _field(st.sampled_from(['root ::= "a"', "root ::= "])),
    "user": _field(_text),
    "cache": _field(st.booleans()),
}
_COMPLETION = {
    **_COMMON,
    "prompt": _field(_text | st.lists(st.integers(0, 1100), max_size=6) | st.lists(_text, min_size=1, max_size=3)),
    "echo": _field(st.booleans()),
    "logprobs": _field(st.integers(0, 5)),
    "best_of": _field(st.integers(1, 3)),
    "suffix": _field(_text),
}
_message = st.fixed_dictionaries({"role": _field(st.sampled_from(["user", "system", "assistant", "tool"])),
                                  "content": _field(_text)})
_CHAT = {
    **_COMMON,
    "messages": _field(st.lists(_message, min_size=1, max_size=3)),
    "logprobs": _field(st.booleans()),
    "top_logprobs": _field(st.integers(0, 5)),
    "max_completion_tokens": _field(_small_int),
    "tools": _field(st.lists(_tool, max_size=2)),
    "tool_choice": _field(st.sampled_from(["auto", "none", "required"])
                          | st.just({"type": "function", "function": {"name": "f"}})),
    "parallel_tool_calls": _field(st.booleans()),
}
_EMBEDDINGS = {
    "model": _field(st.sampled_from([MODEL, "", "no-such-model"])),
    "input": _field(_text | st.lists(_text, min_size=1, max_size=3) | st.lists(st.integers(0, 1100), max_size=4)),
    "encoding_format": _field(st.sampled_from(["float", "base64"])),
    "dimensions": _field(st.integers(1, 64)),
}


def _body(fields: dict[str, st.SearchStrategy], *required: str) -> st.SearchStrategy:
    """A valid body with up to two of its fields (present or not) replaced by hostile values."""
    optional = {k: v for k, v in fields.items() if k not in required}
    valid = st.fixed_dictionaries({k: fields[k] for k in required}, optional=optional)
    spoilt = st.dictionaries(st.sampled_from(sorted(fields)), hostile_value, max_size=2)
    return st.builds(lambda body, bad: {**body, **bad}, valid, spoilt)


def _dumps(body: Any) -> bytes:
    """JSON as a client might send it: NaN and Infinity as Python writes them, lone surrogates as \\u escapes."""
    return json.dumps(body, ensure_ascii=True).encode()


RAW_BODIES = [
    b"", b"{", b"null", b"[]", b'"text"', b"\xff\xfe\x00", b'{"prompt": "\xed\xa0\x80"}', b"{}" * 3,
    b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"a": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001,
    b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}", b'{"prompt": "\\ud800", "model": "' + MODEL.encode() + b'"}',
    b'{"prompt": "' + b"a " * 600_000 + b'", "model": "' + MODEL.encode() + b'"}',
    b'{"prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}',
]
PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]


@dataclass(frozen=True)
class HttpCase:
    path: str
    body: bytes
    content_type: str = "application/json"


http_case = st.one_of(
    _body(_COMPLETION, "prompt").map(lambda b: HttpCase("/v1/completions", _dumps(b))),
    _body(_CHAT, "messages", "max_tokens").map(lambda b: HttpCase("/v1/chat/completions", _dumps(b))),
    _body(_EMBEDDINGS, "input").map(lambda b: HttpCase("/v1/embeddings", _dumps(b))),
    st.builds(HttpCase, st.sampled_from(PATHS), st.sampled_from(RAW_BODIES) | st.binary(max_size=64),
              st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])),
)


class HttpClient:
    """One keep-alive connection to the gateway's HTTP port; reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: http.client.HTTPConnection | None = None

    def send(self, case: HttpCase) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self._conn.request("POST", case.path, case.body, {"Content-Type": case.content_type})
                response = self._conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server may close a connection after refusing a body; one new try
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def http_problem(case: HttpCase, status: int, body: bytes) -> str:
    """'' when the answer is acceptable, else what is wrong with it."""
    if status not in HTTP_OK:
        return f"HTTP {status} for {case.path}: {body[:300]!r}"
    if status == 200 and b'"type":"server_error"' in body:
        return f"a server error inside a 200 answer for {case.path}: {body[-300:]!r}"
    return ""


# ---- gRPC ----

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type in _INT_RANGES:
        lo, hi = _INT_RANGES[field.type]
        return st.one_of(st.integers(0, 8), st.integers(lo, hi), st.sampled_from([lo, hi]))
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32) | st.floats(0, 2, width=32)
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats() | st.floats(0, 2)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        names = [MODEL, "user", "assistant", "system", "auto", "required", "none", "English", "{}"]
        return st.sampled_from(names) | st.text(max_size=30)
    return st.binary(max_size=16)


def message_strategy(cls: type, depth: int = 0) -> st.SearchStrategy:
    """Messages of type cls with every field unset or drawn over its protobuf type (nested messages too)."""
    parts: dict[str, st.SearchStrategy] = {}
    for field in cls.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            parts[field.name] = st.dictionaries(_scalar(key), _scalar(value), max_size=3)
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            inner = message_strategy(GetMessageClass(field.message_type), depth + 1)
        else:
            inner = _scalar(field)
        parts[field.name] = st.lists(inner, max_size=3) if field.is_repeated else inner

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            if isinstance(value, dict):
                getattr(message, name).update(value)
            elif isinstance(value, list):
                getattr(message, name).extend(value)
            elif cls.DESCRIPTOR.fields_by_name[name].message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=parts).map(build)


def _bounded(message: Any) -> Any:
    """Keeps valid requests short: a short positive timeout would make DEADLINE_EXCEEDED the right answer, and a
    long valid output (or none given: all the context) only spends time. Hostile values stay as drawn."""
    options = getattr(message, "options", None)
    if options is None:
        return message
    if 0 < options.timeout_s < MIN_TIMEOUT_S:
        options.timeout_s = MIN_TIMEOUT_S
    sampling = options.sampling
    if not sampling.HasField("max_tokens") or 8 < sampling.max_tokens < 2**20:
        sampling.max_tokens = sampling.max_tokens % 8 + 1
    return message


@dataclass(frozen=True)
class GrpcCase:
    method: str  # Generate, Chat, Translate or Embed
    messages: tuple[bytes, ...]  # serialized requests (one, or the segments of a Translate call)


_serialize = lambda m: m.SerializeToString()  # noqa: E731

grpc_case = st.one_of(
    message_strategy(gateway_pb2.GenerateRequest).map(_bounded).map(
        lambda m: GrpcCase("Generate", (_serialize(m),))),
    message_strategy(gateway_pb2.ChatRequest).map(_bounded).map(lambda m: GrpcCase("Chat", (_serialize(m),))),
    st.lists(message_strategy(gateway_pb2.TranslateSegment).map(_bounded), min_size=1, max_size=2).map(
        lambda ms: GrpcCase("Translate", tuple(_serialize(m) for m in ms))),
    message_strategy(gateway_pb2.EmbedRequest).map(lambda m: GrpcCase("Embed", (_serialize(m),))),
    st.builds(GrpcCase, st.sampled_from(["Generate", "Chat", "Embed"]),
              st.tuples(st.binary(max_size=64) | st.sampled_from([b"\x12\x03\xed\xa0\x80", b"\x0a\xff\xff\xff\x0f"]))),
)


class GrpcClient:
    """Raw-bytes calls on the Gateway service, so that undecodable messages can be sent too."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
        prefix = "/flashstream.v1.Gateway/"
        self._streams = {m: self.channel.unary_stream(prefix + m, identity, identity) for m in ("Generate", "Chat")}
        self._embed = self.channel.unary_unary(prefix + "Embed", identity, identity)
        self._translate = self.channel.stream_stream(prefix + "Translate", identity, identity)

    def send(self, case: GrpcCase) -> tuple[grpc.StatusCode, str]:
        try:
            if case.method == "Embed":
                self._embed(case.messages[0], timeout=60)
            elif case.method == "Translate":
                for _ in self._translate(iter(case.messages), timeout=60):
                    pass
            else:
                for _ in self._streams[case.method](case.messages[0], timeout=60):
                    pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    def close(self) -> None:
        self.channel.close()


def grpc_problem(case: GrpcCase, code: grpc.StatusCode, details: str) -> str:
    return "" if code in GRPC_OK else f"{case.method}: {code.name} {details[:300]}"


# ---- the stack's own figures ----


def stage_named(stack: Any, name: str) -> Any:
    """The stage of a launcher Stack with this name."""
    return next(s for s in stack.stages if s.name == name)


def scheduler_metrics_url(stack: Any) -> str:
    scheduler = stage_named(stack, "scheduler")
    return f"http://127.0.0.1:{scheduler.argv[scheduler.argv.index('--status-port') + 1]}/metrics"


def scheduler_counters(stack: Any) -> tuple[float, float]:
    """(errors the scheduler answered, prompt tokens it accepted), from its /metrics."""
    return scheduler_counters_at(scheduler_metrics_url(stack))


def scheduler_counters_at(metrics_url: str) -> tuple[float, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    errors = sum(float(v) for v in re.findall(r"^flashstream_scheduler_request_errors_total\{.*\} (\S+)$", text,
                                              re.M))
    prompt = sum(float(v) for v in re.findall(r"^flashstream_prompt_tokens_total\{.*\} (\S+)$", text, re.M))
    return errors, prompt


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)[1]) * 1024
