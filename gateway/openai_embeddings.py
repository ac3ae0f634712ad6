"""OpenAI's embeddings API: request JSON → `EmbeddingRequest`, `EmbeddingResult` → response JSON.

`input` is a string, an array of strings, an array of token ids, or an array of arrays of token ids;
`encoding_format` is "float" or "base64" (little-endian float32, as OpenAI sends it); `dimensions` keeps the
first that many features (then normalises when the model does). Extensions: `truncate` (cut inputs over the
model's limit instead of refusing them), `normalize`, and `"cache": false` (compute every vector).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from gateway.embeddings import EmbeddingRequest, EmbeddingResult
from gateway.errors import RequestError
from gateway.openai_request import UINT32, _Body

ENCODING_FORMATS = ("float", "base64")
_INPUT_TYPES = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def _is_token_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _inputs(value: Any) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(texts, token id lists) of `input`; exactly one of them is non-empty."""
    if isinstance(value, str):
        return (value,), ()
    if isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            return tuple(value), ()
        if all(_is_token_id(x) for x in value):
            return (), (tuple(value),)
        if all(isinstance(x, list) and x and all(_is_token_id(t) for t in x) for x in value):
            return (), tuple(tuple(x) for x in value)
    if isinstance(value, list) and not value:
        raise RequestError("'input' must not be empty", "input")
    raise RequestError(f"'input' must be {_INPUT_TYPES}", "input", "invalid_type")


def parse_embeddings_request(body: Any) -> tuple[EmbeddingRequest, str]:
    """The request and its encoding_format."""
    b = _Body(body)
    if "input" not in b.body:
        raise RequestError("'input' is required", "input", "missing_required_parameter")
    texts, token_ids = _inputs(b.body["input"])
    encoding = b.str("encoding_format", "float")
    if encoding not in ENCODING_FORMATS:
        raise RequestError(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, got {encoding!r}",
                           "encoding_format")
    dimensions = b.int("dimensions", 0, UINT32)
    if b.has("dimensions") and dimensions < 1:
        raise RequestError(f"'dimensions' must be at least 1, got {dimensions}", "dimensions")
    normalize = b.bool("normalize", False) if b.has("normalize") else None
    request = EmbeddingRequest(
        model=b.str("model", ""), texts=texts, token_ids=token_ids, normalize=normalize, dimensions=dimensions,
        truncate=b.bool("truncate", False), use_cache=b.bool("cache", True),
    )
    return request, encoding


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector.tolist()


def embeddings_response(result: EmbeddingResult, encoding: str) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding), "cached": c}
            for i, (v, c) in enumerate(zip(result.vectors, result.cached))]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": result.model, "usage": usage}
