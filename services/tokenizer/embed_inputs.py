"""Embedding inputs to token ids, under the model's length limit and truncation rule.

The limit is the shorter of the model's context and the `max_seq_length` that a sentence-transformers folder
names in sentence_bert_config.json (the length the model was trained to embed). An input over it is refused
unless the request asks for truncation; texts are then cut by the tokenizer's own truncation (which keeps the
special tokens the post-processor adds, e.g. BERT's final [SEP]), token ids by keeping the first ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from services.common.errors import InvalidArgument
from services.tokenizer.tokenizer import TextTokenizer


@dataclass(frozen=True, slots=True)
class EmbedInput:
    """One input: text, or token ids used as they are."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


def sentence_transformers_max_len(folder: str | Path) -> int | None:
    path = Path(folder) / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("max_seq_length")
    return int(value) if value else None


class EmbedEncoder:
    """Encodes embedding inputs for one model; thread-safe."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.st_max_len = sentence_transformers_max_len(tokenizer.folder)
        self._truncating: dict[int, Tokenizer] = {}  # max_len → a copy of the tokenizer that truncates to it
        self._lock = threading.Lock()

    def max_len(self, model_max_len: int) -> int:
        """The embedding limit given the model's context (0: unknown, then only the folder's limit counts)."""
        limits = [n for n in (self.st_max_len, model_max_len) if n]
        return min(limits) if limits else 0

    def encode(self, inputs: Sequence[EmbedInput], max_len: int, truncate: bool) -> list[list[int]]:
        if not inputs:
            raise InvalidArgument("input must not be empty")
        texts = [(i, item.text) for i, item in enumerate(inputs) if item.token_ids is None]
        if any(not text for _, text in texts):
            raise InvalidArgument(f"input {next(i for i, t in texts if not t)} is an empty string")
        encoded = self.tokenizer.encode_batch([t for _, t in texts]) if texts else []
        out: list[list[int]] = [[] for _ in inputs]
        for (i, _), ids in zip(texts, encoded):
            out[i] = ids
        long_texts = [i for i, _ in texts if max_len and len(out[i]) > max_len]
        for i, item in enumerate(inputs):
            if item.token_ids is not None:
                if not item.token_ids:
                    raise InvalidArgument(f"input {i} has no tokens")
                self.tokenizer.check_token_ids(item.token_ids)
                out[i] = list(item.token_ids)
            if max_len and len(out[i]) > max_len and not truncate:
                raise InvalidArgument(f"input {i} has {len(out[i])} tokens, more than the model's embedding limit "
                                      f"{max_len}; shorten it or ask for truncation")
            if item.token_ids is not None and max_len:
                out[i] = out[i][:max_len]
        if long_texts:
            cut = self._truncating_tokenizer(max_len).encode_batch([inputs[i].text for i in long_texts])
            for i, encoding in zip(long_texts, cut):
                out[i] = encoding.ids
        return out

    def _truncating_tokenizer(self, max_len: int) -> Tokenizer:
        with self._lock:
            tokenizer = self._truncating.get(max_len)
            if tokenizer is None:
                tokenizer = Tokenizer.from_str(self.tokenizer.backend.to_str())
                tokenizer.enable_truncation(max_len)
                self._truncating[max_len] = tokenizer
            return tokenizer
