"""Checks a guided-decoding spec where the request arrives, so that a bad one is a 400 naming the problem.

The grammar library parses the spec exactly as the worker will; a JSON schema is also checked against its JSON
Schema meta-schema, which catches mistakes the grammar converter ignores (such as `"required": "a"`). A spec that
parses may still match no text at all (an empty character class such as `[^\\d\\D]`, a rule defined only by
itself): the worker would find no token its grammar allows and fail the request after it was queued. So the
grammar is also compiled for a vocabulary of the 256 bytes (cheap: no tokenizer, a millisecond or so) and must
allow a first byte or an immediate end. A dead end further in (`a[^\\d\\D]`) is still found only by the worker.
The worker compiles the same text again for its own vocabulary and caches the result.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway import json_text
from gateway.errors import RequestError
from services.common.errors import InvalidArgument
from services.common.sampling import Guided, grammar_error_message
from services.common.tool_grammar import tool_calls_structural_tag

_NUM_BYTES = 256  # token i is byte i; token 256 ends the output


def _parse_json_schema(text: str, field: str) -> tuple[dict[str, Any], Any]:
    """(the schema, its xgrammar Grammar); RequestError naming `field` when it is not a usable JSON schema."""
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
        grammar = xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError with its reason
        raise RequestError(f"'{field}' cannot be enforced: {grammar_error_message(exc)}", field) from exc
    return schema, grammar


def check_json_schema(text: str, field: str) -> dict[str, Any]:
    """The schema as a dict; raises RequestError naming `field` when it is not a usable JSON schema."""
    schema, grammar = _parse_json_schema(text, field)
    _check_matches_some_text(grammar, field)
    return schema


def check_guided(guided: Guided, field: str) -> None:
    """Raises RequestError naming `field` when the spec does not parse or matches no text."""
    import xgrammar

    if guided.kind == "json_schema":
        check_json_schema(guided.spec, field)
        return
    try:
        if guided.kind == "regex":
            grammar = xgrammar.Grammar.from_regex(guided.spec)
        elif guided.kind == "grammar":
            grammar = xgrammar.Grammar.from_ebnf(guided.spec)
        elif guided.kind == "structural_tag":
            grammar = xgrammar.Grammar.from_structural_tag(guided.spec)
        elif guided.kind == "tool_calls":
            grammar = xgrammar.Grammar.from_structural_tag(tool_calls_structural_tag(guided.spec))
        else:  # json_object
            return
    except InvalidArgument as exc:
        raise RequestError(f"'{field}' is not a valid tool calls spec: {exc.message}", field) from exc
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with the parser's reason
        raise RequestError(f"'{field}' is not a valid {guided.kind.replace('_', ' ')}: {grammar_error_message(exc)}",
                           field) from exc
    _check_matches_some_text(grammar, field)


@functools.cache
def _byte_compiler() -> Any:
    """A grammar compiler for the byte vocabulary (built once per process)."""
    import xgrammar

    info = xgrammar.TokenizerInfo([bytes([b]) for b in range(_NUM_BYTES)] + [b"<end>"],
                                  vocab_type=xgrammar.VocabType.RAW, stop_token_ids=[_NUM_BYTES])
    return xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)


def _check_matches_some_text(grammar: Any, field: str) -> None:
    """RequestError when the grammar allows neither a first byte nor an immediate end."""
    import xgrammar

    matcher = xgrammar.GrammarMatcher(_byte_compiler().compile_grammar(grammar))
    mask = xgrammar.allocate_token_bitmask(1, _NUM_BYTES + 1)
    matcher.fill_next_token_bitmask(mask)
    if not bool(mask.any()):
        raise RequestError(f"'{field}' matches no text: its grammar allows no first character and no empty output",
                           field)
