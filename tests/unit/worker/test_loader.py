"""The loader refuses bad checkpoints at start, naming the file and the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.errors import InvalidArgument
from services.worker.model_config import ModelConfig
from services.worker.presets import preset_config
from services.worker.rope import inv_frequencies
from tests.unit.worker.helpers import cpu_engine, make_checkpoint


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_unsupported_architecture_is_refused_naming_config_json(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgument, match=r"config\.json: architecture \['GPT2LMHeadModel'\] is not supported"):
        cpu_engine(folder)


def test_missing_shard_is_refused_naming_the_shard_and_a_tensor(tmp_path: Path) -> None:
    folder = make_checkpoint("mistral_mqa_sharded", tmp_path / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    tensor = next(t for t, f in index["weight_map"].items() if f == shard)
    (folder / shard).unlink()
    with pytest.raises(InvalidArgument, match=rf"shard .*{shard} \(holding tensor {tensor}\) is missing"):
        cpu_engine(folder)


def test_wrong_tensor_shape_is_refused_naming_file_and_tensor(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(InvalidArgument, match=r"model\.safetensors: tensor model\.layers\.1\.self_attn\.k_proj\.weight "
                                              r"has shape \(16, 64\), expected \(32, 64\)"):
        cpu_engine(folder)


def test_missing_tensor_is_refused_naming_it(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(InvalidArgument, match=r"tensor model\.layers\.0\.mlp\.up_proj\.weight is missing"):
        cpu_engine(folder)


def test_unknown_tensor_is_refused_naming_it(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(InvalidArgument, match=r"tensor model\.layers\.0\.self_attn\.extra\.weight does not belong"):
        cpu_engine(folder)


def test_folder_without_weights_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((llama / "config.json").read_text())
    with pytest.raises(InvalidArgument, match="no model.safetensors"):
        cpu_engine(folder)


def test_presets_carry_the_published_shapes() -> None:
    small, big, qwen = preset_config("llama-3.2-1b"), preset_config("llama-3.1-8b"), preset_config("qwen2.5-0.5b")
    assert (small.hidden_size, small.num_layers, small.num_kv_heads, small.head_dim, small.tie_word_embeddings) == (
        2048, 16, 8, 64, True)
    assert (big.hidden_size, big.intermediate_size, big.num_layers, big.head_dim, big.tie_word_embeddings) == (
        4096, 14336, 32, 128, False)
    assert (qwen.hidden_size, qwen.num_heads, qwen.num_kv_heads, qwen.head_dim, qwen.qkv_bias) == (896, 14, 2, 64, True)
    assert big.rope_scaling.rope_type == "llama3" and big.rope_scaling.factor == 8.0


def test_llama3_rope_matches_transformers_inv_freq() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    cfg = ModelConfig.from_hf({**hf_cfg.to_dict(), "architectures": ["LlamaForCausalLM"]})
    torch.testing.assert_close(inv_frequencies(64, cfg.rope_theta, cfg.rope_scaling), expected, rtol=0, atol=0)
