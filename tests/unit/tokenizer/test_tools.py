"""Tools in the tokenizer stage: rendered as transformers renders them, the format read from the template, and
a forced call turned into a tool_calls grammar, xgrammar's structural tag for that format where it is compiled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xgrammar
from transformers import PreTrainedTokenizerFast

from services.common.sampling import SamplingParams
from services.common.tool_grammar import tool_calls_structural_tag
from services.tokenizer.pb import messages_from_pb
from services.tokenizer.tokenizer import TextTokenizer
from services.tokenizer.tools import HERMES, LLAMA, ToolRequest, template_tool
from tests.unit.tokenizer.tool_templates import HERMES_TEMPLATE, LLAMA_TEMPLATE, set_chat_template
from flashstream.v1 import common_pb2

WEATHER = template_tool("get_weather", "Weather in a city", json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
     "required": ["city"]}))
TIME = template_tool("get_time", "", "")


def _dir(model_dirs: dict[str, Path], tmp_path: Path, template: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model_dirs["chatml" if template is HERMES_TEMPLATE else "llama3"], folder)
    return set_chat_template(folder, template)


def _history() -> list[dict]:
    """A tool round trip as the stage receives it over the wire (arguments as JSON text)."""
    pb = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="user", content="Weather in Köln?"),
        common_pb2.ChatMessage(role="assistant", tool_calls=[common_pb2.ToolCall(
            id="call_1", name="get_weather", arguments_json='{"city": "Köln", "days": 2}')]),
        common_pb2.ChatMessage(role="tool", content='{"temp": 21}', tool_call_id="call_1", name="get_weather"),
    ]
    return messages_from_pb(pb)


@pytest.mark.parametrize("template", [HERMES_TEMPLATE, LLAMA_TEMPLATE], ids=["hermes", "llama"])
def test_tools_and_tool_turns_render_like_transformers_apply_chat_template(
    model_dirs: dict[str, Path], tmp_path: Path, template: str
) -> None:
    folder = _dir(model_dirs, tmp_path, template)
    ours = TextTokenizer.from_dir(folder)
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    messages = _history()
    expected = hf.apply_chat_template(messages, tools=[WEATHER, TIME], tokenize=False, add_generation_prompt=True)
    assert ours.render_chat(messages, True, [WEATHER, TIME]) == expected
    assert '"arguments": {"city": "Köln", "days": 2}' in expected or '"parameters": {"city": "Köln", "days": 2}' \
        in expected
    assert ours.tool_call_format == (HERMES if template is HERMES_TEMPLATE else LLAMA)


def test_tool_choice_none_renders_no_tools_and_auto_adds_no_grammar() -> None:
    params = SamplingParams(max_tokens=5)
    assert ToolRequest([WEATHER], "none").template_tools is None
    assert ToolRequest([WEATHER], "auto").template_tools == [WEATHER]
    assert ToolRequest([WEATHER], "auto").constrain(params, HERMES) is params
    assert ToolRequest([], "required").constrain(params, HERMES) is params


@pytest.mark.parametrize("output_format", [HERMES, LLAMA])
def test_a_required_call_is_constrained_to_a_call_of_a_given_tool(output_format: str) -> None:
    forced = ToolRequest([WEATHER, TIME], "required", "get_weather").constrain(SamplingParams(), output_format)
    required = ToolRequest([WEATHER, TIME], "required").constrain(SamplingParams(), output_format)
    assert forced.guided.kind == required.guided.kind == "tool_calls"
    info = xgrammar.TokenizerInfo([chr(c) for c in range(32, 127)] + ["\n", "é"])
    compiler = xgrammar.GrammarCompiler(info)

    def accepts(guided, text: str) -> bool:  # noqa: ANN001
        matcher = xgrammar.GrammarMatcher(compiler.compile_structural_tag(tool_calls_structural_tag(guided.spec)))
        return matcher.accept_string(text) and matcher.is_completed()

    if output_format == HERMES:
        weather = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call>'
        clock = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
        bad_args = '<tool_call>\n{"name": "get_weather", "arguments": {"days": 2}}\n</tool_call>'
    else:
        weather = '{"name": "get_weather", "parameters": {"city": "Köln"}}'
        clock = '{"name": "get_time", "parameters": {}}'
        bad_args = '{"name": "get_weather", "parameters": {"days": 2}}'
    assert accepts(forced.guided, weather) and not accepts(forced.guided, clock)
    assert accepts(required.guided, weather) and accepts(required.guided, clock)
    assert not accepts(required.guided, bad_args) and not accepts(required.guided, "It is sunny.")


def test_forcing_a_call_imports_neither_xgrammar_nor_torch_in_the_tokenizer_stage() -> None:
    # The stage would keep their few hundred MB for good after its first forced call.
    code = ("import sys, json; from services.common.sampling import SamplingParams; "
            "from services.tokenizer.tools import HERMES, ToolRequest, template_tool; "
            "tool = template_tool('f', '', json.dumps({'type': 'object'})); "
            "guided = ToolRequest([tool], 'required', 'f').constrain(SamplingParams(), HERMES).guided; "
            "print(guided.kind, sorted(m for m in ('xgrammar', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "tool_calls []"
