"""How a decoder is divided over tensor-parallel ranks, and what each rank loads of a checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from services.common.errors import InvalidArgument
from services.worker.loader import build_empty_model, load_weights
from services.worker.model_config import ModelConfig, RopeScaling
from services.worker.ops import REFERENCE_OPS
from services.worker.parallel.group import TensorParallelGroup
from services.worker.parallel.shard import DecoderShard, TensorSlice
from tests.unit.worker.helpers import make_checkpoint

CFG = ModelConfig(architecture="LlamaForCausalLM", vocab_size=250, hidden_size=64, intermediate_size=128,
                  num_layers=2, num_heads=8, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                  rope_scaling=RopeScaling(),
                  max_position_embeddings=512, qkv_bias=True, o_bias=True, qk_norm=False, tie_word_embeddings=False,
                  eos_token_ids=(), dtype="float32")


def test_kv_heads_divide_when_tp_divides_them_and_replicate_per_gqa_group_otherwise() -> None:
    assert [DecoderShard.of(CFG, r, 2).kv_head_start for r in range(2)] == [0, 1]
    assert DecoderShard.of(CFG, 1, 2).local.num_kv_heads == 1
    # 8 query heads, 2 KV heads, 4 ranks: ranks 0 and 1 run query heads 0-3, which read KV head 0.
    assert [DecoderShard.of(CFG, r, 4).kv_head_start for r in range(4)] == [0, 0, 1, 1]
    assert DecoderShard.of(CFG, 3, 4).checkpoint_slice("model.layers.0.self_attn.k_proj.weight") == TensorSlice(
        0, 8, 8, 16)
    assert DecoderShard.of(CFG, 3, 4).checkpoint_slice("model.layers.0.self_attn.q_proj.weight") == TensorSlice(
        0, 48, 16, 64)


def test_vocabulary_blocks_are_ceil_of_vocab_over_tp_and_the_last_is_shorter() -> None:
    assert DecoderShard.of(CFG, 0, 4).vocab_widths == (63, 63, 63, 61)
    assert DecoderShard.of(CFG, 3, 4).checkpoint_slice("lm_head.weight") == TensorSlice(0, 189, 61, 250)


def test_row_parallel_weights_split_columns_and_only_rank_0_adds_their_bias() -> None:
    shard = DecoderShard.of(CFG, 1, 2)
    assert shard.checkpoint_slice("model.layers.1.self_attn.o_proj.weight") == TensorSlice(1, 32, 32, 64)
    assert shard.checkpoint_slice("model.layers.1.mlp.down_proj.weight") == TensorSlice(1, 64, 64, 128)
    assert shard.checkpoint_slice("model.layers.1.self_attn.o_proj.bias") is None
    assert not shard.adds_bias("model.layers.1.self_attn.o_proj.bias")
    assert DecoderShard.of(CFG, 0, 2).adds_bias("model.layers.1.self_attn.o_proj.bias")
    assert shard.adds_bias("model.layers.1.self_attn.q_proj.bias")
    assert shard.checkpoint_slice("model.embed_tokens.weight") is None


@pytest.mark.parametrize(("cfg", "size", "message"), [
    (CFG, 3, "must divide num_attention_heads 8"),
    (replace(CFG, intermediate_size=100), 8, "must divide intermediate_size 100"),
    (replace(CFG, num_heads=12, num_kv_heads=3), 4, "must divide num_key_value_heads 3 or be a multiple of it"),
])
def test_sizes_that_would_split_a_head_or_a_group_are_refused(cfg, size, message) -> None:  # noqa: ANN001
    with pytest.raises(InvalidArgument, match=message):
        DecoderShard.of(cfg, 0, size)


def test_a_rank_loads_exactly_its_slices_of_the_checkpoint(tmp_path) -> None:  # noqa: ANN001
    folder = make_checkpoint("qwen2", tmp_path)
    hf = load_file(folder / "model.safetensors")
    cfg = ModelConfig.from_folder(folder)
    model = build_empty_model(cfg, REFERENCE_OPS, torch.float32, torch.device("cpu"), TensorParallelGroup(1, 2))
    load_weights(model, folder)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    p = "model.layers.1."
    q, kv = 2 * 16, 16  # rank 1 of 2: query heads 2-3 and KV head 1, of head_dim 16
    expected_qkv = torch.cat([hf[p + "self_attn.q_proj.weight"][q : 2 * q], hf[p + "self_attn.k_proj.weight"][kv:],
                              hf[p + "self_attn.v_proj.weight"][kv:]])
    assert torch.equal(attn.qkv_proj.weight, expected_qkv)
    assert torch.equal(attn.qkv_proj.bias[:q], hf[p + "self_attn.q_proj.bias"][q:])
    assert torch.equal(attn.o_proj.weight, hf[p + "self_attn.o_proj.weight"][:, q:])
    assert torch.equal(mlp.gate_up_proj.weight, torch.cat([hf[p + "mlp.gate_proj.weight"][64:],
                                                           hf[p + "mlp.up_proj.weight"][64:]]))
    assert torch.equal(mlp.down_proj.weight, hf[p + "mlp.down_proj.weight"][:, 64:])
    assert torch.equal(model.lm_head.weight, hf["lm_head.weight"][128:])
    assert torch.equal(model.model.embed_tokens.weight, hf["model.embed_tokens.weight"])
