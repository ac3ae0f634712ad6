"""Configs of well-known checkpoints, for `--load-format dummy|fake` without a model folder.

The values are those of each model's published config.json (only the fields the decoder reads).
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument
from services.worker.model_config import ModelConfig

_LLAMA3_ROPE_1B = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}
_LLAMA3_ROPE_8B = {**_LLAMA3_ROPE_1B, "factor": 8.0}

PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "rms_norm_eps": 1e-5, "rope_scaling": _LLAMA3_ROPE_1B,
        "max_position_embeddings": 131072, "tie_word_embeddings": True, "bos_token_id": 128000,
        "eos_token_id": 128001, "torch_dtype": "bfloat16",
    },
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "rms_norm_eps": 1e-5, "rope_scaling": _LLAMA3_ROPE_8B,
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "bos_token_id": 128000,
        "eos_token_id": 128001, "torch_dtype": "bfloat16",
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
        "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True,
        "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    },
}


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise InvalidArgument(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return ModelConfig.from_hf(PRESETS[name], f"preset {name}")
