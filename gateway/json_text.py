"""JSON text from clients → Python values, refusing what the rest of the gateway must never see.

Every JSON text a client sends (an HTTP body, a schema or tool parameters given as a string) is read here, so
that these limits hold everywhere:
- nesting at most MAX_JSON_DEPTH deep: deeper input would exhaust the stack of recursive code downstream (the
  JSON parser itself, schema validation, the grammar compiler);
- no lone UTF-16 surrogates ("\\ud800" without its pair): they are not Unicode text, and the protobuf encoder,
  the cache key and the tokenizer would each fail on them;
- integers of at most MAX_INT_DIGITS digits: Python refuses to parse longer ones, and no field takes them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.errors import RequestError

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 40

# A lone surrogate can only come from a \\u escape (strict UTF-8 decoding refuses encoded ones), so a text
# without a surrogate escape needs no search through its strings.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _check(value: Any, what: str, param: str | None, surrogates_possible: bool) -> None:
    """Walks the parsed value without recursion: depth, and (when the text had surrogate escapes) strings."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        else:
            if surrogates_possible and isinstance(node, str) and _SURROGATE.search(node):
                raise RequestError(f"{what} holds a lone UTF-16 surrogate, which is not valid Unicode text", param,
                                   "invalid_unicode")
            continue
        if depth >= MAX_JSON_DEPTH:
            raise RequestError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", param, "too_deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))


def loads(text: str | bytes, what: str = "the request body", param: str | None = None) -> Any:
    """The value of one JSON text; raises RequestError (400, naming `param`) when it is not acceptable."""
    try:
        # Decoded strictly here: json.loads would let UTF-8-encoded surrogates through ("surrogatepass").
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, parse_int=_parse_int)
    except RecursionError as exc:
        raise RequestError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", param, "too_deep") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError, as is _parse_int's
        raise RequestError(f"{what} is not valid JSON: {exc}", param, "invalid_json") from exc
    escapes = _SURROGATE_ESCAPE.search(text) if isinstance(text, bytes) else "\\u" in text
    _check(value, what, param, bool(escapes))
    return value
