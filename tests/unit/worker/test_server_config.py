"""Flags of `serve worker` become a validated WorkerConfig; presets serve in fake mode without any model file."""

from __future__ import annotations

import pytest
import torch

from services.common.errors import InvalidArgument
from services.common.sampling import SamplingParams
from services.common.step import NewSeq, StepPlan
from services.worker.build import build_engine
from services.worker.server import build_config
from tests.unit.worker.helpers import cpu_engine, make_checkpoint


def test_every_flag_reaches_the_config() -> None:
    config = build_config([
        "--model", "llama-3.2-1b", "--model-id", "m", "--load-format", "dummy", "--dtype", "bfloat16",
        "--device", "cuda:1", "--block-size", "32", "--num-kv-blocks", "100", "--gpu-memory-utilization", "0.5",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "512", "--max-model-len", "1024", "--enforce-eager",
        "--fake-token-id", "7", "--seed", "3", "--worker-id", "w1", "--port", "0", "--status-port", "0",
    ])
    assert (config.model, config.model_id, config.load_format, config.dtype, config.device) == (
        "llama-3.2-1b", "m", "dummy", "bfloat16", "cuda:1")
    assert (config.block_size, config.num_kv_blocks, config.gpu_memory_utilization, config.max_num_seqs) == (
        32, 100, 0.5, 8)
    assert (config.max_num_batched_tokens, config.max_model_len, config.enforce_eager) == (512, 1024, True)
    assert (config.fake_token_id, config.seed, config.worker_id, config.server.port) == (7, 3, "w1", 0)


def test_block_size_must_be_a_power_of_two() -> None:
    with pytest.raises(InvalidArgument, match="block_size must be a power of two, got 24"):
        build_config(["--model", "x", "--block-size", "24"])


def test_fake_mode_takes_vocab_eos_and_length_from_the_preset() -> None:
    engine = build_engine(build_config(["--model", "llama-3.1-8b", "--load-format", "fake"]))
    info = engine.info
    assert (info.model.vocab_size, info.model.eos_token_ids, info.max_model_len, info.num_kv_blocks) == (
        128256, (128001,), 131072, 65536)
    result = engine.runner.step(StepPlan(1, [NewSeq(1, [1, 2, 3], 3, SamplingParams(), [0], 0, 3)]))
    assert result.sampled.token_ids == [0]


def test_a_kv_cache_smaller_than_max_model_len_caps_it_with_a_warning_that_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    info = build_engine(build_config(["--model", "qwen2.5-0.5b", "--load-format", "fake", "--num-kv-blocks",
                                      "1024"])).info
    assert (info.max_model_len, info.num_kv_blocks * info.block_size) == (16384, 16384)
    assert "max_model_len capped from 32768 (the model's limit) to 16384: the KV cache holds only 1024 blocks of " \
           "16 tokens" in caplog.text
    info = build_engine(build_config(["--model", "qwen2.5-0.5b", "--load-format", "fake", "--num-kv-blocks", "1024",
                                      "--max-model-len", "20000"])).info
    assert info.max_model_len == 16384
    assert "max_model_len capped from 20000 (--max-model-len) to 16384" in caplog.text


def test_preset_without_dummy_or_fake_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="preset 'qwen2.5-0.5b' has no weights"):
        build_engine(build_config(["--model", "qwen2.5-0.5b"]))


def test_dummy_weights_fill_every_parameter_with_finite_values(tmp_path) -> None:  # noqa: ANN001
    folder = make_checkpoint("qwen3", tmp_path / "q")
    engine = cpu_engine(folder, load_format="dummy")
    params = dict(engine.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert float(params["model.norm.weight"].min()) == 1.0
    assert 0.015 < float(params["model.layers.0.mlp.gate_up_proj.weight"].std()) < 0.025
    assert engine.info.model_revision.startswith("dummy-")


def test_a_decoder_embeds_by_transformers_last_hidden_state_at_the_last_token(tmp_path) -> None:  # noqa: ANN001
    import transformers

    folder = make_checkpoint("llama_tied", tmp_path / "l")
    engine = cpu_engine(folder)
    inputs = [[5, 6, 7, 8, 9], [3, 1]]
    got = torch.tensor(engine.embed(inputs, normalize=False))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = torch.stack([hf.model(torch.tensor([ids])).last_hidden_state[0, -1] for ids in inputs])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
