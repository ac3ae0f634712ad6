"""Gateway events → OpenAI JSON: full responses, streamed chunks, usage and logprobs (error bodies:
services.common.openai_errors)."""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from typing import Any

from gateway.schema import Finished, TextDelta, TokenLogprob, TopLogprob, Usage
from gateway.tool_calls import ToolCallParser, tool_call_json
from services.common.finish_reason import FinishReason


def json_bytes(obj: Any) -> bytes:
    """obj as compact JSON in UTF-8 (non-ASCII text as itself, not escaped): every JSON body the gateway sends."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# Stands for a chunk's text in the template of a request's plain text chunks (ResponseBuilder.chunk_bytes): no
# model emits it, and its JSON form appears in the chunk's JSON exactly once, where the text goes.
_TEXT_MARK = "\x00text\x00"


def openai_finish_reason(reason: FinishReason) -> str:
    """OpenAI's finish_reason: stop tokens, EOS and stop strings are all "stop"."""
    if reason is FinishReason.LENGTH:
        return "length"
    if reason is FinishReason.ABORT:
        return "abort"
    return "stop"


def usage_json(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    if usage.result_cached:  # extension field, only on answers replayed from the result cache
        body["result_cached"] = True
    return body


def _token_bytes(lp: TokenLogprob | TopLogprob) -> list[int]:
    return list(lp.token_bytes or lp.text.encode())


class LogprobsBuilder:
    """Logprobs in OpenAI's completions shape (tokens, token_logprobs, top_logprobs, text_offset) or chat shape
    (content: [{token, logprob, bytes, top_logprobs}]).

    A token's text_offset is the index of the first character its bytes are part of: its tokens' bytes are
    decoded as they come, so the bytes of one character split over several tokens put all of them at that
    character, and a token that breaks off an unfinished character starts after that character's U+FFFD."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.offset = 0  # characters completed so far
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def build(self, items: tuple[TokenLogprob, ...], text: str) -> dict[str, Any]:
        if self.chat:
            content = [
                {
                    "token": lp.text,
                    "logprob": lp.logprob,
                    "bytes": _token_bytes(lp),
                    "top_logprobs": [
                        {"token": t.text, "logprob": t.logprob, "bytes": _token_bytes(t)} for t in lp.top
                    ],
                }
                for lp in items
            ]
            return {"content": content}
        offsets = []
        for lp in items:
            raw = bytes(_token_bytes(lp))
            offsets.append(self.offset + self._replaced_before(raw))
            self.offset += len(self._decoder.decode(raw))
        return {
            "tokens": [lp.text for lp in items],
            "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{t.text: t.logprob for t in lp.top} for lp in items],
            "text_offset": offsets,
        }

    def _replaced_before(self, raw: bytes) -> int:
        """1 when `raw` cannot continue the character the decoder holds unfinished: that character becomes one
        U+FFFD made of earlier tokens' bytes alone (the bytes held are always a valid start, so exactly one)."""
        pending = self._decoder.getstate()[0]
        if not pending or not raw:
            return 0
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(pending + raw[:1])
        return 1 if head.startswith("\ufffd") else 0

    def merge(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One logprobs object from the per-chunk ones (for a response that is not streamed)."""
        merged: dict[str, list[Any]] = {key: [] for key in self.build((), "")}
        for part in parts:
            for key, values in part.items():
                merged.setdefault(key, []).extend(values)
        return merged


class ResponseBuilder:
    """Builds the JSON of one request's answer, streamed as chunks or whole."""

    def __init__(
        self, request_id: str, model: str, created: int, chat: bool, logprobs: bool, index: int = 0,
        tool_calls: bool = False,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.created = created
        self.chat = chat
        self.index = index  # the choice this builder writes
        self.logprobs = LogprobsBuilder(chat) if logprobs else None
        self.tools = ToolCallParser() if tool_calls else None  # the output may hold tool calls
        self._role_sent = False
        self._text_template: tuple[bytes, bytes] | None = None  # a plain text chunk's JSON around its text

    def chunk_bytes(self, delta: TextDelta) -> bytes:
        """json_bytes(chunk(delta)), the bytes of most streamed chunks: once the role has gone out, a delta of plain
        text (no logprobs asked, no tool calls possible) only has its text encoded, into a template made from
        `chunk` once per request."""
        if self.logprobs is not None or self.tools is not None or (self.chat and not self._role_sent):
            return json_bytes(self.chunk(delta))
        if self._text_template is None:
            whole = json_bytes(self.chunk(TextDelta(_TEXT_MARK)))
            head, _, tail = whole.partition(json_bytes(_TEXT_MARK))
            self._text_template = (head, tail)
        head, tail = self._text_template
        return head + json_bytes(delta.text) + tail

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def _logprobs(self, delta: TextDelta) -> dict[str, Any] | None:
        return None if self.logprobs is None else self.logprobs.build(delta.logprobs, delta.text)

    def chunk(self, delta: TextDelta | None, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed chunk: new text (delta) or the closing one (finish_reason)."""
        text = delta.text if delta is not None else ""
        logprobs = self._logprobs(delta) if delta is not None else None
        if not self.chat:
            choice = {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            return self._envelope("text_completion", [choice])
        message: dict[str, Any] = {}
        if not self._role_sent:
            message["role"] = "assistant"
            self._role_sent = True
        if self.tools is not None:
            text, calls = self.tools.finish() if delta is None else self.tools.feed(text)
            first = len(self.tools.calls) - len(calls)
            if calls:
                message["tool_calls"] = [tool_call_json(first + i, c) for i, c in enumerate(calls)]
            if text:
                message["content"] = text
            if finish_reason == "stop" and self.tools.calls:
                finish_reason = "tool_calls"
        elif delta is not None:
            message["content"] = text
        choice = {"index": self.index, "delta": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._envelope("chat.completion.chunk", [choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The extra last chunk of stream_options.include_usage: no choices, only usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(obj, []), "usage": usage_json(usage)}

    def choice(self, deltas: list[TextDelta], done: Finished) -> dict[str, Any]:
        """This builder's choice of an answer that was not streamed."""
        text = "".join(d.text for d in deltas)
        logprobs = None
        if self.logprobs is not None:
            logprobs = self.logprobs.merge([self.logprobs.build(d.logprobs, d.text) for d in deltas])
        reason = openai_finish_reason(done.finish_reason)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.tools is not None:
                content, calls = self.tools.feed(text)
                rest, more = self.tools.finish()
                calls += more
                message["content"] = (content + rest) or None
                if calls:
                    message["tool_calls"] = [
                        {k: v for k, v in tool_call_json(i, c).items() if k != "index"} for i, c in enumerate(calls)
                    ]
                    reason = "tool_calls" if reason == "stop" else reason
            return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": reason}
        return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def full(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        """The whole answer of a request that was not streamed: every choice and the usage of them all."""
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        body["usage"] = usage_json(usage)
        return body


def combined_usage(usages: Sequence[Usage], n: int) -> Usage:
    """The usage of a request's choices (n per prompt, prompt by prompt): each prompt counts once, as OpenAI
    counts it, and every choice's completion."""
    firsts = usages[::n]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in firsts),
        completion_tokens=sum(u.completion_tokens for u in usages),
        cached_tokens=sum(u.cached_tokens for u in firsts),
        result_cached=all(u.result_cached for u in usages),
    )
