"""OpenAI structured-output and tool fields → plain values: response_format, the guided_* extensions, tools,
tool_choice, and the tool parts of chat messages. Wrong shapes are 400s naming the field.

response_format: {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema",
"strict"}} (strict or not, the schema is enforced). Extensions, one at a time and not with response_format:
"guided_json" (a schema, object or JSON text), "guided_regex", "guided_grammar" (EBNF).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import RequestError
from gateway.schema import ToolCall, ToolSpec
from services.common.sampling import Guided

_EXTENSIONS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_grammar": "grammar"}


def _bad(field: str, expected: str) -> RequestError:
    return RequestError(f"'{field}' must be {expected}", field, "invalid_type")


def _schema_text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    raise _bad(field, "a JSON schema object")


def parse_guided(body: dict[str, Any]) -> Guided | None:
    """The grammar a request asks for, or None."""
    given = [name for name in ("response_format", *_EXTENSIONS) if body.get(name) is not None]
    if len(given) > 1:
        raise RequestError(f"only one of {', '.join(given)} may be given", given[1])
    if not given:
        return None
    name = given[0]
    value = body[name]
    if name != "response_format":
        if name == "guided_json":
            return Guided("json_schema", _schema_text(value, name))
        if not isinstance(value, str) or not value:
            raise _bad(name, "a non-empty string")
        return Guided(_EXTENSIONS[name], value)
    if not isinstance(value, dict):
        raise _bad(name, "an object")
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guided("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or spec.get("schema") is None:
            raise RequestError("'response_format.json_schema' must be an object with a 'schema'",
                               "response_format.json_schema", "missing_required_parameter")
        return Guided("json_schema", _schema_text(spec["schema"], "response_format.json_schema.schema"))
    raise RequestError(f"'response_format.type' must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                       "response_format.type", "unsupported_value")


def parse_tools(body: dict[str, Any]) -> dict[str, Any]:
    """GenerationRequest keyword arguments: tools, tool_choice, forced_tool and single_tool_call."""
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "a boolean")
    tools, choice, forced = _tools(body)
    return {"tools": tools, "tool_choice": choice, "forced_tool": forced, "single_tool_call": not parallel}


def _tools(body: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], str, str]:
    raw = body.get("tools")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _bad("tools", "an array")
    tools = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"tools[{i}]", "a function tool: {\"type\": \"function\", \"function\": {\"name\": ...}}")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise _bad(f"tools[{i}].function.description", "a string")
        params = fn.get("parameters")
        params_text = "" if params is None else _schema_text(params, f"tools[{i}].function.parameters")
        tools.append(ToolSpec(fn["name"], description, params_text))
    choice = body.get("tool_choice")
    if choice is None:
        return tuple(tools), "auto", ""
    if isinstance(choice, str):
        return tuple(tools), choice, ""
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad("tool_choice", "'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}")
    return tuple(tools), "required", fn["name"]


def message_tool_fields(i: int, message: dict[str, Any]) -> dict[str, Any]:
    """ChatTurn keyword arguments for the tool parts of messages[i]: tool_calls, tool_call_id and name."""
    fields: dict[str, Any] = {}
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise _bad(f"messages[{i}].tool_calls", "an array")
        parsed = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad(f"messages[{i}].tool_calls[{j}]", "a function call with a name")
            args = fn.get("arguments", "{}")
            parsed.append(ToolCall(str(call.get("id", "")), fn["name"],
                                   args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
        fields["tool_calls"] = tuple(parsed)
    for key in ("tool_call_id", "name"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise _bad(f"messages[{i}].{key}", "a string")
            fields[key] = value
    return fields
