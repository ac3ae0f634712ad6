"""Chat templates render exactly as transformers' apply_chat_template(tokenize=False), in a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from services.common.errors import InvalidArgument
from services.tokenizer.chat_template import ChatTemplate
from services.tokenizer.tokenizer import TextTokenizer
from tests.unit.tokenizer.conftest import STYLES

CONVERSATIONS = [
    [{"role": "user", "content": "What is 東京 famous for?"}],
    [{"role": "system", "content": "  You answer in one line.  "}, {"role": "user", "content": "Hi 👋🏽"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "서울 날씨 어때?"},
        {"role": "assistant", "content": "맑아요 ☀️"},
        {"role": "user", "content": "And tomorrow — café?"},
    ],
    [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three\nfour"},
        {"role": "assistant", "content": "five 🇯🇵"},
        {"role": "user", "content": "six"},
    ],
]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_templates_render_like_transformers_apply_chat_template(
    model_dirs: dict[str, Path], style: str, add_generation_prompt: bool
) -> None:
    ours = TextTokenizer.from_dir(model_dirs[style])
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dirs[style]))
    for messages in CONVERSATIONS:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.render_chat(messages, add_generation_prompt=add_generation_prompt) == expected
        assert ours.encode(expected, add_special_tokens=False) == hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False)


def test_llama3_style_prompt_has_the_expected_shape(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["llama3"])
    text = tok.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: ")
    assert text.endswith("Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tool_message_renders_through_tojson_without_html_escaping(model_dirs: dict[str, Path]) -> None:
    ours = TextTokenizer.from_dir(model_dirs["chatml"])
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dirs["chatml"]))
    messages = [{"role": "user", "content": "temp?"}, {"role": "assistant", "content": "calling"},
                {"role": "tool", "content": "<b>21°C</b> & \"sunny\""}]
    rendered = ours.render_chat(messages)
    assert rendered == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert '"<b>21°C</b> & \\"sunny\\""' in rendered


def test_raise_exception_in_a_template_is_invalid_argument(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["mistral"])
    with pytest.raises(InvalidArgument, match="Roles must alternate"):
        tok.render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_sandbox_refuses_access_to_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(InvalidArgument, match="refused"):
        template.render([{"role": "user", "content": "x"}])
    namespace = ChatTemplate("{% set ns = namespace(_x=1) %}{{ ns }}", {})
    with pytest.raises(InvalidArgument, match="underscore"):
        namespace.render([{"role": "user", "content": "x"}])
    immutable = ChatTemplate("{% set m = messages %}{{ m.append(1) }}", {})
    with pytest.raises(InvalidArgument):
        immutable.render([{"role": "user", "content": "x"}])


def test_empty_conversation_and_missing_template_are_invalid_argument(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["chatml"])
    with pytest.raises(InvalidArgument, match="at least one message"):
        tok.render_chat([])
    tok.chat_template = None
    with pytest.raises(InvalidArgument, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "x"}])


def test_template_that_does_not_compile_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="does not compile"):
        ChatTemplate("{% for m in messages %}", {})
