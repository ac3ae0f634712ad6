"""Pooling of per-token hidden states into one vector per input, as a model folder's sentence-transformers files
name it (modules.json, 1_Pooling/config.json, a Normalize module, sentence_bert_config.json).

A folder without those files pools as its kind implies: an encoder by its first ([CLS]) token, a causal decoder
by its last token (the only position that has seen the whole input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from services.common.errors import InvalidArgument

POOLING_MODES = ("mean", "cls", "last")
_ST_MODES = {  # 1_Pooling/config.json flag → our mode
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    mode: str  # one of POOLING_MODES
    normalize: bool  # the model's default when a request does not say
    max_seq_length: int | None = None  # sentence-transformers' truncation length, when the folder names one

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise InvalidArgument(f"pooling mode {self.mode!r} is not one of {POOLING_MODES}")

    @classmethod
    def from_folder(cls, folder: str | Path, default_mode: str) -> "PoolingConfig":
        folder = Path(folder)
        modules_path = folder / "modules.json"
        if not modules_path.is_file():
            return cls(default_mode, normalize=False, max_seq_length=_max_seq_length(folder))
        modules = json.loads(modules_path.read_text())
        mode, normalize = default_mode, False
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Normalize":
                normalize = True
            elif kind == "Pooling":
                mode = _st_pooling_mode(folder / module.get("path", "") / "config.json")
        return cls(mode, normalize, _max_seq_length(folder))


def _st_pooling_mode(path: Path) -> str:
    if not path.is_file():
        raise InvalidArgument(f"{path}: missing (modules.json names a Pooling module)")
    flags = json.loads(path.read_text())
    if "pooling_mode" in flags:  # newer sentence-transformers write the mode by name
        named = {"mean": "mean", "cls": "cls", "lasttoken": "last"}.get(flags["pooling_mode"])
        if named is None:
            raise InvalidArgument(f"{path}: pooling_mode {flags['pooling_mode']!r} is not supported")
        return named
    chosen = [mode for flag, mode in _ST_MODES.items() if flags.get(flag)]
    others = [k for k, v in flags.items() if k.startswith("pooling_mode") and v and k not in _ST_MODES]
    if len(chosen) != 1 or others:
        raise InvalidArgument(f"{path}: exactly one of mean, CLS or last-token pooling must be on")
    return chosen[0]


def _max_seq_length(folder: Path) -> int | None:
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("max_seq_length")
    return int(value) if value else None


def pool(hidden: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden: [num_tokens, hidden] packed inputs; lengths: [num_inputs]. Returns [num_inputs, hidden] in fp32."""
    hidden = hidden.float()
    ends = torch.cumsum(lengths, 0)  # [num_inputs]
    if mode == "cls":
        return hidden[ends - lengths]
    if mode == "last":
        return hidden[ends - 1]
    owner = torch.repeat_interleave(torch.arange(lengths.shape[0], device=hidden.device), lengths)
    sums = torch.zeros(lengths.shape[0], hidden.shape[1], device=hidden.device).index_add_(0, owner, hidden)
    return sums / lengths[:, None].to(sums.dtype)


def finish_vectors(vectors: torch.Tensor, dimensions: int, normalize: bool) -> torch.Tensor:
    """Keeps the first `dimensions` features (0: all), then L2-normalises when asked. [n, hidden] → [n, d]."""
    if dimensions:
        vectors = vectors[:, :dimensions]
    return F.normalize(vectors, dim=-1) if normalize else vectors
