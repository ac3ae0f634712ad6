"""Tool calling in the tokenizer stage: tools and tool turns as chat templates read them, and the grammar that
makes a forced call parse.

Messages and tools take the shapes transformers' `apply_chat_template(messages, tools=...)` documents: tools as
`{"type": "function", "function": {"name", "description", "parameters"}}`, an assistant turn's calls as
`{"type": "function", "id", "function": {"name", "arguments"}}` with the arguments a dict (templates apply
`tojson` to them), a tool turn with `tool_call_id` and `name`.

Output format. The model writes calls the way its template taught it: Hermes and Qwen templates wrap each call
in `<tool_call>{"name": ..., "arguments": ...}</tool_call>`; Llama 3.1-3.3 templates ask for a bare
`{"name": ..., "parameters": ...}`. The format is read from the template's text once. With tool_choice
"required" or a named function, the stage asks the worker for a "tool_calls" grammar (services.common.tool_grammar:
xgrammar's structural tag of that format, built where it is compiled), so the output is a call of one of the given
functions with arguments that validate against its parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from services.common.errors import InvalidArgument
from services.common.sampling import Guided, SamplingParams
from services.common.tool_grammar import tool_calls_spec

HERMES = "qwen_3"  # xgrammar's name for the <tool_call> JSON format (Hermes, Qwen 2.5 and 3)
LLAMA = "llama"  # bare JSON with "parameters" (Llama 3.1 to 3.3)


def tool_call_format(template_source: str | None) -> str:
    """Which of the two output formats a chat template teaches."""
    return HERMES if template_source and "<tool_call>" in template_source else LLAMA


@dataclass(slots=True)
class ToolRequest:
    """The tools of one chat request, in template shape, and whether a call is forced."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "auto"  # "auto", "none" or "required"
    forced: str = ""  # the function that must be called; "" for none
    single: bool = False  # a forced call is exactly one call (otherwise one or more)

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """What the template gets as `tools`: none when the model must not call one."""
        return self.tools if self.tools and self.choice != "none" else None

    def constrain(self, sampling: SamplingParams, output_format: str) -> SamplingParams:
        """sampling with the grammar of a forced call; unchanged unless a call is required."""
        if not self.tools or (self.choice != "required" and not self.forced):
            return sampling
        tools = [t for t in self.tools if not self.forced or t["function"]["name"] == self.forced]
        if not tools:
            raise InvalidArgument(f"tool_choice names function {self.forced!r}, which is not among the tools")
        spec = tool_calls_spec(output_format, tools, self.forced, parallel=not self.single)
        return replace(sampling, guided=Guided("tool_calls", spec))


def template_tool(name: str, description: str, parameters_json: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    function["parameters"] = _json(parameters_json, f"tool {name!r} parameters") if parameters_json else {
        "type": "object", "properties": {}}
    return {"type": "function", "function": function}


def template_message(
    role: str, content: str, calls: list[tuple[str, str, str]], tool_call_id: str, name: str
) -> dict[str, Any]:
    """One chat turn as templates read it; calls are (id, name, arguments JSON)."""
    message: dict[str, Any] = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = [
            {"type": "function", "id": call_id, "function": {"name": fn, "arguments": _json(args, f"call {fn!r}")}}
            for call_id, fn, args in calls
        ]
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    if name:
        message["name"] = name
    return message


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{what} are not valid JSON: {exc}") from exc
