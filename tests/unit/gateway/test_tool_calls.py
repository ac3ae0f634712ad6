"""Tool calls parsed out of the model's text, whole or fed in arbitrary pieces, in both formats."""

from __future__ import annotations

import json

import pytest

from gateway.openai_response import ResponseBuilder
from gateway.schema import Finished, TextDelta
from gateway.tool_calls import ToolCallParser
from services.common.finish_reason import FinishReason

HERMES = ('Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
LLAMA = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Köln"}}; {"name": "get_time", "parameters": {}}'


def _feed(text: str, size: int) -> tuple[str, list[tuple[str, dict]]]:
    parser = ToolCallParser()
    content, calls = "", []
    for i in range(0, len(text), size):
        piece, new = parser.feed(text[i:i + size])
        content += piece
        calls += new
    piece, new = parser.finish()
    return content + piece, [(c.name, json.loads(c.arguments_json)) for c in calls + new]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
@pytest.mark.parametrize(("text", "content"), [(HERMES, "Let me look."), (LLAMA, "")], ids=["hermes", "llama"])
def test_calls_are_parsed_whatever_the_pieces(text: str, content: str, size: int) -> None:
    assert _feed(text, size) == (content, [("get_weather", {"city": "Köln"}), ("get_time", {})])


@pytest.mark.parametrize("text", ["Plain answer.", "{not json", '{"name": 3}', "<tool_ca", "<tool_call>{broken",
                                  '{"a": 1} trailing'])
def test_text_that_is_not_a_call_comes_back_unchanged(text: str) -> None:
    for size in (1, 4, 100):
        assert _feed(text, size) == (text, [])


def test_a_streamed_chat_carries_calls_as_indexed_deltas_and_finishes_with_tool_calls() -> None:
    builder = ResponseBuilder("chatcmpl-1", "m", 0, chat=True, logprobs=False, tool_calls=True)
    chunks = [builder.chunk(TextDelta(HERMES[i:i + 20])) for i in range(0, len(HERMES), 20)]
    chunks.append(builder.chunk(None, "stop"))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "Let me look."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [(c["index"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "function", "get_weather", '{"city": "Köln"}'), (1, "function", "get_time", "{}")]
    assert all(c["id"].startswith("call_") for c in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_whole_chat_answer_has_tool_calls_and_no_content_when_it_only_calls() -> None:
    builder = ResponseBuilder("chatcmpl-1", "m", 0, chat=True, logprobs=False, tool_calls=True)
    done = Finished(FinishReason.EOS)
    body = builder.full([builder.choice([TextDelta(LLAMA[:10]), TextDelta(LLAMA[10:])], done)], done.usage)
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("get_weather", '{"city": "Köln"}'), ("get_time", "{}")]
    assert "index" not in message["tool_calls"][0]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
