"""The FP8 KV cache in the worker: half the bytes per token, per-layer scales, logits near the model-dtype cache."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.fp8_accuracy import fixed_prompts, last_logits, logit_agreement
from services.common.errors import InvalidArgument
from services.worker.attention_metadata import SeqChunk
from services.worker.config import WorkerConfig
from services.worker.engine import WorkerEngine
from services.worker.kv_cache import kv_bytes_per_block
from services.worker.presets import preset_config
from tests.unit.worker.helpers import build_gpu_path_reference_engine, cpu_engine, make_checkpoint


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def _prefill_then_decode_logits(engine: WorkerEngine, prompts: list[list[int]]) -> torch.Tensor:
    """Logits of each prompt's last position, then of one decode step per prompt (its token 7 appended), stacked:
    [2 * len(prompts), vocab]. Both read the keys and values the prefill wrote into the cache."""
    prefill = last_logits(engine, prompts)
    block_size, chunks, next_block = engine.info.block_size, [], 0
    for prompt in prompts:
        num_blocks = -(-(len(prompt) + 1) // block_size)
        first = next_block
        next_block += -(-len(prompt) // block_size)  # last_logits gave each prompt these blocks, in order
        chunks.append(SeqChunk(len(prompt), 1, list(range(first, first + num_blocks))))
    # A prompt whose decode token opens a new block would reuse the next prompt's first block: keep them apart.
    if any(len(p) % block_size == 0 for p in prompts):
        raise ValueError("prompt lengths must not be multiples of the block size")
    with torch.inference_mode():
        decode = engine.runner.executor.forward([7] * len(prompts), chunks, list(range(len(prompts))))
    return torch.cat([prefill, decode.float().cpu()])


def test_an_fp8_kv_block_takes_half_the_bytes_of_a_bf16_block() -> None:
    cfg = preset_config("llama-3.1-8b")
    assert kv_bytes_per_block(cfg, 16, torch.bfloat16) == 2 * 32 * 16 * 8 * 128 * 2
    assert kv_bytes_per_block(cfg, 16, torch.float8_e4m3fn) == 2 * 32 * 16 * 8 * 128


def test_kv_cache_dtype_fp8_allocates_a_float8_cache(llama: Path) -> None:
    engine = cpu_engine(llama, kv_cache_dtype="fp8")
    cache = engine.runner.executor.kv_cache
    assert cache.data.dtype == torch.float8_e4m3fn
    assert cache.num_bytes == cpu_engine(llama).runner.executor.kv_cache.num_bytes // 4  # fp32 model


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_fp8_kv_cache_logits_stay_close_to_the_model_dtype_cache(tmp_path: Path, kind: str) -> None:
    folder = make_checkpoint(kind, tmp_path / kind)
    prompts = fixed_prompts(256, num_prompts=8, first_len=9)
    reference = _prefill_then_decode_logits(cpu_engine(folder), prompts)
    agreement = logit_agreement(reference, _prefill_then_decode_logits(cpu_engine(folder, kv_cache_dtype="fp8"),
                                                                       prompts))
    assert agreement["rows"] == 16
    # Random tiny models with near-flat 256-way outputs (measured: cosine mean 0.996 / 0.998, top-1 0.88 / 0.94).
    assert agreement["cosine_mean"] >= 0.99 and agreement["cosine_min"] >= 0.97
    assert agreement["top1_agreement"] >= 0.8 and agreement["kl_mean"] <= 0.02


def test_fp8_weights_and_fp8_kv_cache_together_stay_close_to_the_original(llama: Path) -> None:
    prompts = fixed_prompts(256, num_prompts=8, first_len=9)
    reference = _prefill_then_decode_logits(cpu_engine(llama), prompts)
    both = _prefill_then_decode_logits(cpu_engine(llama, quantization="fp8", kv_cache_dtype="fp8"), prompts)
    agreement = logit_agreement(reference, both)
    # Measured 0.986 cosine mean, 0.625 top-1 over 16 near-flat rows: the two roundings add up.
    assert agreement["cosine_mean"] >= 0.98 and agreement["cosine_min"] >= 0.95
    assert agreement["top1_agreement"] >= 0.6 and agreement["kl_mean"] <= 0.05


def _with_kv_scales(src: Path, dst: Path, scales: dict[str, torch.Tensor]) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(dst / "model.safetensors")
    save_file({**tensors, **scales}, dst / "model.safetensors")
    return dst


def test_checkpoint_kv_scales_set_each_layers_scales_and_are_used(llama: Path, tmp_path: Path) -> None:
    folder = _with_kv_scales(llama, tmp_path / "m", {
        "model.layers.0.self_attn.k_scale": torch.tensor([0.25]),
        "model.layers.0.self_attn.v_scale": torch.tensor(0.5),
        "model.layers.1.self_attn.k_scale": torch.tensor([2.0]),
    })
    engine = cpu_engine(folder, kv_cache_dtype="fp8")
    layers = engine.model.model.layers
    assert (layers[0].self_attn.k_scale, layers[0].self_attn.v_scale) == (0.25, 0.5)
    assert (layers[1].self_attn.k_scale, layers[1].self_attn.v_scale) == (2.0, 1.0)
    prompts = fixed_prompts(256, num_prompts=4, first_len=9)
    unscaled = _prefill_then_decode_logits(cpu_engine(llama, kv_cache_dtype="fp8"), prompts)
    scaled = _prefill_then_decode_logits(engine, prompts)
    # Other scales round other values to FP8, so the logits move, but stay those of the same model.
    assert not torch.equal(scaled, unscaled)
    assert logit_agreement(unscaled, scaled)["cosine_min"] >= 0.99


def test_autofp8_output_scales_and_a_single_kv_scale_set_the_layers_scales(llama: Path, tmp_path: Path) -> None:
    folder = _with_kv_scales(llama, tmp_path / "m", {
        "model.layers.0.self_attn.k_proj.output_scale": torch.tensor([0.125]),
        "model.layers.0.self_attn.v_proj.output_scale": torch.tensor([4.0]),
        "model.layers.1.self_attn.kv_scale": torch.tensor(0.75),
    })
    layers = cpu_engine(folder, kv_cache_dtype="fp8").model.model.layers
    assert (layers[0].self_attn.k_scale, layers[0].self_attn.v_scale) == (0.125, 4.0)
    assert (layers[1].self_attn.k_scale, layers[1].self_attn.v_scale) == (0.75, 0.75)


def test_a_kv_scale_that_is_not_positive_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = _with_kv_scales(llama, tmp_path / "m", {"model.layers.0.self_attn.k_scale": torch.tensor([0.0])})
    with pytest.raises(InvalidArgument, match=r"tensor model\.layers\.0\.self_attn\.k_scale must be one positive "
                                              r"scale, got 0\.0"):
        cpu_engine(folder)


def test_a_kv_scale_that_is_not_one_positive_value_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = _with_kv_scales(llama, tmp_path / "m", {"model.layers.1.self_attn.v_scale": torch.tensor([1.0, 2.0])})
    with pytest.raises(InvalidArgument, match=r"tensor model\.layers\.1\.self_attn\.v_scale must be one positive "
                                              r"scale, got shape \(2,\)"):
        cpu_engine(folder)


def test_unknown_kv_cache_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"kv_cache_dtype must be one of \('auto', 'fp8'\), got 'int8'"):
        WorkerConfig(model="m", kv_cache_dtype="int8")


@pytest.mark.gpu
def test_fp8_kv_cache_on_cuda_holds_twice_the_blocks(llama: Path) -> None:
    from services.worker.build import build_engine

    # The utilization is a share of the whole device, other processes' memory included: tests running beside this
    # one on the same GPU hold some, so the share is what they hold now plus 30% for this engine.
    free, total = torch.cuda.mem_get_info()
    share = min(1.0, (total - free) / total + 0.3)

    def profiled_blocks(kv_cache_dtype: str) -> int:
        engine = build_engine(WorkerConfig(model=str(llama), device="cuda", dtype="bfloat16", max_model_len=256,
                                           kv_cache_dtype=kv_cache_dtype, gpu_memory_utilization=share,
                                           enforce_eager=True))
        blocks = engine.info.num_kv_blocks
        del engine
        gc.collect()  # the next profile must not count this engine's cache as weights
        torch.cuda.empty_cache()
        return blocks

    bf16_blocks, fp8_blocks = profiled_blocks("auto"), profiled_blocks("fp8")
    assert 1.9 <= fp8_blocks / bf16_blocks <= 2.1


@pytest.mark.gpu
def test_fp8_weights_and_cache_on_cuda_graphs_stay_near_the_reference(llama: Path, monkeypatch) -> None:  # noqa: ANN001
    from services.worker.build import build_engine

    def config(enforce_eager: bool) -> WorkerConfig:
        return WorkerConfig(model=str(llama), device="cuda", dtype="bfloat16", max_model_len=256, num_kv_blocks=128,
                            max_num_seqs=8, quantization="fp8", kv_cache_dtype="fp8", enforce_eager=enforce_eager)

    prompts = fixed_prompts(256, num_prompts=8, first_len=9)
    kernels_engine = build_engine(config(False))
    model_runner = kernels_engine.runner.executor
    assert model_runner.graphs is not None and model_runner.piecewise.num_graphs > 0
    assert sum(map(len, prompts)) <= model_runner.piecewise.max_tokens  # the prefill replays the pieces
    kernels = _prefill_then_decode_logits(kernels_engine, prompts)
    # The reference rounds the prefill's activations per token as the tensor-core path does; the decode rows take
    # the dequantising kernel, which keeps them.
    reference = _prefill_then_decode_logits(build_gpu_path_reference_engine(config(True), monkeypatch), prompts)
    agreement = logit_agreement(reference, kernels)
    # An entry on an FP8 rounding boundary (activations, cache) may round the other way in bf16 kernels.
    assert agreement["cosine_min"] >= 0.95, agreement
    assert agreement["cosine_mean"] >= 0.98, agreement
    assert agreement["top1_agreement"] >= 0.8, agreement


@pytest.mark.gpu
def test_fp8_model_replayed_from_cuda_graphs_matches_its_eager_kernels(llama: Path) -> None:
    """Piecewise graphs for the prefill (FP8 GEMMs with per-token scales, FP8 cache writes captured) and a decode
    graph for the next step compute what the same kernels compute launched one by one."""
    from services.worker.build import build_engine

    def logits(enforce_eager: bool) -> torch.Tensor:
        engine = build_engine(WorkerConfig(model=str(llama), device="cuda", dtype="bfloat16", max_model_len=256,
                                           num_kv_blocks=128, max_num_seqs=8, quantization="fp8",
                                           kv_cache_dtype="fp8", enforce_eager=enforce_eager))
        assert (engine.runner.executor.piecewise is None) == enforce_eager
        return _prefill_then_decode_logits(engine, fixed_prompts(256, num_prompts=8, first_len=9))

    graphed, eager = logits(False), logits(True)
    # The padded bucket may take another GEMM tiling than the unpadded step: rounding differs, nothing else.
    assert ((graphed - eager).norm() / eager.norm()).item() < 1e-2
    assert logit_agreement(eager, graphed)["top1_agreement"] >= 0.9
