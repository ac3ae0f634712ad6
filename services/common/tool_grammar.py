"""The grammar of a forced tool call, carried as a `Guided` of kind "tool_calls".

The tokenizer stage knows the tools and the model's output format (read from its chat template); the worker
compiles grammars. The tokenizer therefore sends what the call must look like as plain JSON
({"format", "tools", "tool_choice", "parallel_tool_calls"}), and whoever compiles or checks it turns that into
xgrammar's structural tag for the format here. Building the tag in the tokenizer would import xgrammar there,
and with it torch and transformers: a few hundred MB that the stage would keep for good after its first forced
call.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import InvalidArgument


def tool_calls_spec(output_format: str, tools: list[dict[str, Any]], forced: str, parallel: bool) -> str:
    """The spec of a call of one of `tools` (of `forced` alone when it is not ""), in `output_format`."""
    choice: Any = {"type": "function", "function": {"name": forced}} if forced else "required"
    return json.dumps({"format": output_format, "tools": tools, "tool_choice": choice,
                       "parallel_tool_calls": parallel}, ensure_ascii=False, sort_keys=True)


def tool_calls_structural_tag(spec: str) -> str:
    """xgrammar's structural tag (JSON text) of a tool_calls spec; InvalidArgument when the spec is not one."""
    import xgrammar

    try:
        args = json.loads(spec)
        tag = xgrammar.get_model_structural_tag(
            args["format"], tools=args["tools"], tool_choice=args["tool_choice"], reasoning=False,
            parallel_tool_calls=bool(args["parallel_tool_calls"]))
    except (ValueError, TypeError, KeyError) as exc:  # not JSON, a missing key, or a shape xgrammar refuses
        raise InvalidArgument(f"guided tool_calls is not a tool call spec: {exc}") from exc
    return tag.model_dump_json()
