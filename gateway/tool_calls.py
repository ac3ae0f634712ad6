"""The model's tool-call text → OpenAI tool calls, fed the output as it streams.

Two formats (see services.tokenizer.tools): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks
(Hermes, Qwen), anywhere in the output after any text; and bare JSON `{"name": ..., "parameters": {...}}`
(Llama 3.x, optionally after `<|python_tag|>`, several separated by ";"), which must open the output. Text that
turns out not to be a call is given back as content, unchanged. A call is emitted once it is complete, with
its arguments whole; text that might still become a call is held back until it is decided.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway.schema import ToolCall

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"


def _call(obj: Any) -> ToolCall | None:
    """A ToolCall from a parsed {"name", "arguments" | "parameters"} object; None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", obj["name"], json.dumps(args, ensure_ascii=False))


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest end of text that is a start of marker (it may yet become the marker)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser:
    """feed() each text delta, then finish(); each returns (content text, completed calls) to send now."""

    def __init__(self) -> None:
        self._buffer = ""
        self._mode = "start"  # "start" (undecided), "text", "tagged" (<tool_call> blocks) or "json" (bare JSON)
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        if self._mode == "start":
            head = self._buffer.lstrip()
            if head.startswith(_PYTHON_TAG) or head.startswith("{"):
                self._mode = "json"
            elif head.startswith(_OPEN):
                self._mode = "tagged"
            elif not head or _PYTHON_TAG.startswith(head) or _OPEN.startswith(head):
                return "", []
            else:
                self._mode = "text"
        if self._mode == "text":
            return self._text()
        if self._mode == "tagged":
            return "", self._tagged()
        return "", []  # bare JSON is decided at the end: it may be text that only opens with "{"

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self._mode == "json":
            calls = self._bare_json()
            if calls is not None:
                self.calls += calls
                return "", calls
        if self._mode == "tagged":
            calls = self._tagged()
            rest, self._buffer = self._buffer, ""
            return ("" if rest.strip() == "" else rest), calls
        rest, self._buffer = self._buffer, ""
        return rest, []

    def _text(self) -> tuple[str, list[ToolCall]]:
        start = self._buffer.find(_OPEN)
        if start >= 0:
            content, self._buffer = self._buffer[:start], self._buffer[start:]
            self._mode = "tagged"
            return content, self._tagged()
        keep = _held_prefix(self._buffer, _OPEN)
        content = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(content):]
        return content, []

    def _tagged(self) -> list[ToolCall]:
        """Complete <tool_call> blocks at the front of the buffer; a block that is not a call stays as text."""
        calls: list[ToolCall] = []
        while True:
            head = self._buffer.lstrip()
            end = head.find(_CLOSE)
            if not head.startswith(_OPEN) or end < 0:
                break
            try:
                call = _call(json.loads(head[len(_OPEN):end]))
            except json.JSONDecodeError:
                call = None
            if call is None:
                break
            calls.append(call)
            self._buffer = head[end + len(_CLOSE):]
        self.calls += calls
        return calls

    def _bare_json(self) -> list[ToolCall] | None:
        text = self._buffer.strip().removeprefix(_PYTHON_TAG).strip()
        decoder = json.JSONDecoder()
        calls: list[ToolCall] = []
        pos = 0
        while pos < len(text):
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                return None
            call = _call(obj)
            if call is None:
                return None
            calls.append(call)
            while pos < len(text) and text[pos] in "; \n\t":
                pos += 1
        self._buffer = ""
        return calls


def tool_call_json(index: int, call: ToolCall) -> dict[str, Any]:
    """One call in OpenAI's shape (the streamed delta adds its index)."""
    return {"index": index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json}}
