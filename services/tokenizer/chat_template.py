"""Chat templates: Jinja2 in an immutable sandbox, with the environment Hugging Face templates expect.

Templates come with model folders and are untrusted code, so they run in
`jinja2.sandbox.ImmutableSandboxedEnvironment`. The environment matches what transformers'
`apply_chat_template` builds (trim_blocks and lstrip_blocks on, loop controls, a JSON `tojson` that
does not escape HTML, `raise_exception`, `strftime_now`, a `dict` constructor and a namespace that
refuses underscore names) so that a prompt renders to the same string here as there; the tests
compare the two on several templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgument

# Message keys under which reasoning text may arrive; templates read `reasoning_content` (and gpt-oss `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A Jinja namespace that refuses underscore-prefixed names (no reaching into Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - mirrors jinja2.utils.Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore names, got {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """A copy made only of JSON types, so the template sees no object with methods it could misuse."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


class ChatTemplate:
    """One compiled chat template; `render` is what apply_chat_template(tokenize=False) returns."""

    def __init__(self, source: str, special_tokens: Mapping[str, str]) -> None:
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise InvalidArgument(f"chat template does not compile: {exc}") from exc
        self.source = source
        self._special_tokens = dict(special_tokens)  # bos_token, eos_token, ... as template variables

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Renders a conversation. Raises InvalidArgument when it is empty or the template refuses it."""
        if not messages:
            raise InvalidArgument("a chat needs at least one message")
        # Keys whose value is None are dropped, as many templates test for presence, not for None.
        chat = [_alias_reasoning({k: v for k, v in _plain(m).items() if v is not None}) for m in messages]
        variables = _plain({**self._special_tokens, **extra})
        try:
            return self._template.render(
                messages=chat,
                tools=None if tools is None else _plain(list(tools)),
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except Exception as exc:  # noqa: BLE001 - any template failure is a problem with this conversation
            raise InvalidArgument(f"chat template refused the conversation: {exc}") from exc
