"""Checks a guided-decoding spec where the request arrives, so that a bad one is a 400 naming the problem.

The grammar library parses the spec exactly as the worker will (without a vocabulary, so this is cheap: no
tokenizer, no token masks); a JSON schema is also checked against its JSON Schema meta-schema, which catches
mistakes the grammar converter ignores (such as `"required": "a"`). The worker compiles the same text again
for its vocabulary and caches the result.
"""

from __future__ import annotations

from typing import Any

from gateway import json_text
from gateway.errors import RequestError
from services.common.errors import InvalidArgument
from services.common.sampling import Guided, grammar_error_message
from services.common.tool_grammar import tool_calls_structural_tag


def check_json_schema(text: str, field: str) -> dict[str, Any]:
    """The schema as a dict; raises RequestError naming `field` when it is not a usable JSON schema."""
    import jsonschema
    import xgrammar

    schema = json_text.loads(text, f"'{field}'", field)
    if not isinstance(schema, dict):
        raise RequestError(f"'{field}' must be a JSON object (a JSON schema)", field)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise RequestError(f"'{field}' is not a valid JSON schema at {where}: {exc.message}", field) from exc
    try:
        xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError with its reason
        raise RequestError(f"'{field}' cannot be enforced: {grammar_error_message(exc)}", field) from exc
    return schema


def check_guided(guided: Guided, field: str) -> None:
    """Raises RequestError naming `field` when the spec does not parse."""
    import xgrammar

    if guided.kind == "json_schema":
        check_json_schema(guided.spec, field)
        return
    try:
        if guided.kind == "regex":
            xgrammar.Grammar.from_regex(guided.spec)
        elif guided.kind == "grammar":
            xgrammar.Grammar.from_ebnf(guided.spec)
        elif guided.kind == "structural_tag":
            xgrammar.Grammar.from_structural_tag(guided.spec)
        elif guided.kind == "tool_calls":
            xgrammar.Grammar.from_structural_tag(tool_calls_structural_tag(guided.spec))
    except InvalidArgument as exc:
        raise RequestError(f"'{field}' is not a valid tool calls spec: {exc.message}", field) from exc
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with the parser's reason
        raise RequestError(f"'{field}' is not a valid {guided.kind.replace('_', ' ')}: {grammar_error_message(exc)}",
                           field) from exc
