"""The model's shape and flags, read from a Hugging Face config.json (or a preset holding the same values).

One decoder implementation serves every supported architecture; what differs between them is captured here as
flags (projection biases, per-head q/k norm, RoPE scaling, tied embeddings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.worker.quantization import checkpoint_quantization

# Architecture → (bias on q/k/v projections, RMSNorm on q and k per head). Llama's optional `attention_bias`
# adds bias to all four projections; Qwen2 always has q/k/v bias and no o bias.
ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "LlamaForCausalLM": (False, False),
    "MistralForCausalLM": (False, False),
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_ROPE_TYPES = ("default", "linear", "llama3")
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """RoPE frequency scaling; `rope_type` "default" means none."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything the worker needs to build the decoder, its KV cache and its rotary tables."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]
    dtype: str  # the checkpoint's dtype name ("bfloat16", ...)
    sliding_window: int | None = None  # attention window; the worker caps max_model_len to it
    quantization: str = ""  # "fp8": the checkpoint's projections are stored in FP8 (quantization_config)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise InvalidArgument(
                f"num_attention_heads {self.num_heads} must be a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if self.head_dim % 2 != 0:
            raise InvalidArgument(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Reads a Hugging Face config dict; refuses what the decoder cannot serve, naming `source`."""
        architecture = _architecture(hf, source)
        qkv_bias, qk_norm = ARCHITECTURES[architecture]
        attention_bias = bool(hf.get("attention_bias", False))
        if hf.get("mlp_bias"):
            raise InvalidArgument(f"{source}: mlp_bias is not supported")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise InvalidArgument(f"{source}: hidden_act {act!r} is not supported (only silu)")
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or hidden // num_heads
        return cls(
            architecture=architecture,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(hf),
            rope_scaling=_rope_scaling(hf, source),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            qkv_bias=qkv_bias or attention_bias,
            o_bias=attention_bias and architecture != "Qwen2ForCausalLM",
            qk_norm=qk_norm,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            eos_token_ids=_token_ids(hf.get("eos_token_id")),
            dtype=_dtype_name(hf.get("dtype") or hf.get("torch_dtype") or "float32", source),
            sliding_window=_sliding_window(hf),
            quantization=checkpoint_quantization(hf, source),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ModelConfig":
        """Reads config.json of a checkpoint folder, adding EOS ids of generation_config.json when present."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise InvalidArgument(f"{path}: missing (a model folder needs config.json)")
        hf = json.loads(path.read_text())
        gen_path = Path(folder) / "generation_config.json"
        if gen_path.is_file():
            gen_eos = _token_ids(json.loads(gen_path.read_text()).get("eos_token_id"))
            merged = list(_token_ids(hf.get("eos_token_id")))
            merged += [t for t in gen_eos if t not in merged]
            hf = {**hf, "eos_token_id": merged}
        return cls.from_hf(hf, str(path))


def _architecture(hf: dict[str, Any], source: str) -> str:
    names = hf.get("architectures") or []
    if not names and hf.get("model_type") in _MODEL_TYPES:
        names = [_MODEL_TYPES[hf["model_type"]]]
    for name in names:
        if name in ARCHITECTURES:
            return name
    supported = ", ".join(ARCHITECTURES)
    raise InvalidArgument(f"{source}: architecture {names or hf.get('model_type')!r} is not supported ({supported})")


def _rope_params(hf: dict[str, Any]) -> dict[str, Any]:
    # Transformers 5 writes `rope_parameters` (with rope_theta inside); older files use rope_theta + rope_scaling.
    return dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})


def _rope_theta(hf: dict[str, Any]) -> float:
    return float(_rope_params(hf).get("rope_theta") or hf.get("rope_theta") or 10000.0)


def _rope_scaling(hf: dict[str, Any], source: str) -> RopeScaling:
    params = _rope_params(hf)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in _ROPE_TYPES:
        raise InvalidArgument(f"{source}: rope type {rope_type!r} is not supported ({', '.join(_ROPE_TYPES)})")
    if rope_type == "default":
        return RopeScaling()
    return RopeScaling(
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _sliding_window(hf: dict[str, Any]) -> int | None:
    window = hf.get("sliding_window")
    if not window or hf.get("use_sliding_window") is False:
        return None
    return int(window)


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _dtype_name(value: str, source: str) -> str:
    name = str(value).removeprefix("torch.")
    aliases = {"float": "float32", "half": "float16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    name = aliases.get(name, name)
    if name not in _DTYPES:
        raise InvalidArgument(f"{source}: dtype {value!r} is not supported ({', '.join(_DTYPES)})")
    return name
