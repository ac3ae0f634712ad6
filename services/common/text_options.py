"""What the tokenizer stage does with a request's text (flashstream.v1.TextOptions as plain data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextOptions:
    stop: tuple[str, ...] = ()  # the output ends before the first of these strings
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True  # leave special tokens out of the text
    add_special_tokens: bool = True  # add BOS etc. when encoding a plain prompt (a rendered chat carries its own)
    echo_prompt: bool = False  # send the prompt text as the first delta
