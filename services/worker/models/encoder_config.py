"""The shape of a BERT-family encoder, read from a Hugging Face config.json.

Encoders (BertModel and the checkpoints that share its layout, such as sentence-transformers' MiniLM) attend
bidirectionally, add learned absolute position and token-type embeddings, and post-normalise every sublayer with
LayerNorm. They only embed: there is no KV cache to keep and no token to sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument

ENCODER_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining")
ENCODER_MODEL_TYPES = ("bert",)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_DTYPES = ("float32", "float16", "bfloat16")


def is_encoder_folder(folder: str | Path) -> bool:
    """Whether config.json of `folder` names a BERT-family encoder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    hf = json.loads(path.read_text())
    return hf.get("model_type") in ENCODER_MODEL_TYPES or any(
        a in ENCODER_ARCHITECTURES for a in hf.get("architectures") or ())


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """Everything the worker needs to build the encoder."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int
    dtype: str  # the checkpoint's dtype name

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise InvalidArgument(
                f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise InvalidArgument(f"hidden_act {self.hidden_act!r} is not supported (one of {ACTIVATIONS})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads  # no grouped-query attention in BERT

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return ()  # an encoder generates nothing

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "EncoderConfig":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise InvalidArgument(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not "
                                  "supported (only absolute)")
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        return cls(
            architecture=(hf.get("architectures") or ["BertModel"])[0],
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            hidden_act=str(hf.get("hidden_act", "gelu")),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            dtype=dtype if dtype in _DTYPES else "float32",
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "EncoderConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise InvalidArgument(f"{path}: missing (a model folder needs config.json)")
        return cls.from_hf(json.loads(path.read_text()), str(path))
