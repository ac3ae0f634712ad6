"""The torch side of building a worker: device and dtype, weights, rotary tables, KV cache, graphs, sampler."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from kernels.fp8_linear import has_fp8_tensor_cores
from services.common.errors import InvalidArgument
from services.worker.config import CPU_DEFAULT_KV_BLOCKS, WorkerConfig
from services.worker.cuda_graphs import DecodeGraphs
from services.worker.embedding import Embedder, EmbeddingShape
from services.worker.engine import EngineInfo, WorkerEngine, fit_max_model_len
from services.worker.grammar import GrammarCache
from services.worker.kv_cache import KVCache
from services.worker.loader import build_empty_model, init_dummy_weights, load_weights
from services.worker.model_config import ModelConfig
from services.worker.model_runner import ModelRunner
from services.worker.models.decoder import store_projections_input_major
from services.worker.models.fp8_linear import quantize_lm_head, quantize_projections
from services.worker.ops import Ops, select_ops
from services.worker.parallel.group import SINGLE, TensorParallelGroup
from services.worker.parallel.steps import LeaderRunner
from services.worker.piecewise_graphs import PiecewiseGraphs
from services.worker.pooling import PoolingConfig
from services.worker.profiling import profile_kv_blocks
from services.worker.quantization import FP8
from services.worker.rope import rotary_tables
from services.worker.runner import Runner
from services.worker.sampler import Sampler
from services.worker.sequences import SequenceLimits

log = logging.getLogger(__name__)


def resolve_device(name: str, tp_rank: int | None = None) -> torch.device:
    """The device `name` means; a tensor-parallel rank r (tp_rank) runs on cuda:r where it names CUDA."""
    if name == "auto":
        name = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "cuda" and tp_rank is not None:
        return torch.device("cuda", tp_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        name = cfg.dtype if cfg.dtype in ("float16", "bfloat16") else "bfloat16"
    return getattr(torch, name)


def kv_cache_dtype(name: str, dtype: torch.dtype, device: torch.device, ops: Ops) -> torch.dtype:
    """The KV cache's element type: the model's dtype, or float8_e4m3fn for "fp8" where the kernels can read it."""
    if name != "fp8":
        return dtype
    if ops.uses_kernels and device.type == "cuda" and not has_fp8_tensor_cores(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise InvalidArgument(f"--kv-cache-dtype fp8 needs a GPU of compute capability 8.9 or newer (the attention "
                              f"kernels convert float8_e4m3fn in registers); {device} is {major}.{minor}")
    return torch.float8_e4m3fn


def build_model_engine(
    config: WorkerConfig,
    cfg: ModelConfig,
    model_id: str,
    revision: str,
    max_len: int,
    worker_id: str,
    use_kernels: bool | None = None,
    tp: TensorParallelGroup | None = None,
) -> WorkerEngine:
    tp = tp or SINGLE
    if tp.size != config.tensor_parallel_size:
        raise InvalidArgument(f"--tensor-parallel-size {config.tensor_parallel_size} asked for, but this process "
                              f"is one of {tp.size} ranks")
    if tp.size > 1 and FP8 in (config.quantization, cfg.quantization):
        raise InvalidArgument("FP8 projections under tensor parallelism are not supported yet")
    device = resolve_device(config.device, tp.rank if tp.size > 1 else None)
    dtype = resolve_dtype(config.dtype, cfg, device)
    ops = select_ops(device, use_kernels)
    dummy = config.load_format == "dummy"
    # Random weights are drawn in the model dtype, then quantised as --quantization fp8 would (an FP8 checkpoint's
    # config too): FP8 tensors have no random draw.
    model = build_empty_model(replace(cfg, quantization="") if dummy else cfg, ops, dtype, device, tp)
    if dummy:
        init_dummy_weights(model, config.seed)
    else:
        load_weights(model, config.model)
    if FP8 in (config.quantization, cfg.quantization):
        quantized = quantize_projections(model, ops)  # none when the checkpoint stored them in FP8
        if quantized:
            log.info("quantised %d projections to FP8", quantized)
    if config.quantize_lm_head:
        quantize_lm_head(model, ops)
        log.info("quantised the output projection to FP8")
    if device.type == "cuda":
        store_projections_input_major(model)
    kv_dtype = kv_cache_dtype(config.kv_cache_dtype, dtype, device, ops)
    model.set_rope(*rotary_tables(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_len, device))
    num_blocks = config.num_kv_blocks
    if not num_blocks:
        if device.type == "cuda":
            num_blocks = profile_kv_blocks(
                model, config.block_size, config.max_num_batched_tokens, config.max_num_seqs, max_len,
                config.gpu_memory_utilization, kv_dtype,
            ).num_kv_blocks
            if num_blocks == 0:
                raise InvalidArgument("no room for a KV cache: raise --gpu-memory-utilization or lower the limits")
        else:
            num_blocks = CPU_DEFAULT_KV_BLOCKS
        num_blocks = tp.min_over_ranks(num_blocks)  # one block table for every rank's share of the cache
    max_len = fit_max_model_len(max_len, num_blocks, config.block_size, bool(config.max_model_len))
    kv_cache = KVCache(model.cfg, num_blocks, config.block_size, kv_dtype, device)  # this rank's KV heads
    graphs, piecewise = None, None
    if device.type == "cuda" and not config.enforce_eager and tp.size > 1:
        log.warning("tensor parallel: CUDA graphs are not captured yet, every step runs eagerly")
    elif device.type == "cuda" and not config.enforce_eager:
        graphs = DecodeGraphs(model, kv_cache, config.max_num_seqs, max_len)
        graphs.capture()
        log.info("captured decode CUDA graphs for batch sizes %s", graphs.buckets)
        if config.piecewise_max_tokens:
            max_tokens = min(config.piecewise_max_tokens, config.max_num_batched_tokens)
            piecewise = PiecewiseGraphs(model, kv_cache, max_tokens)
            piecewise.capture()
            log.info("captured %d piecewise CUDA graphs of steps up to %d tokens (buckets %s)", piecewise.num_graphs,
                     piecewise.max_tokens, piecewise.buckets)
    limits = SequenceLimits(config.block_size, num_blocks, max_len, cfg.vocab_size)
    sampler = Sampler(cfg.vocab_size, cfg.eos_token_ids)
    if device.type == "cuda":
        sampler.warm_up(device)  # the decode graphs compiled greedy's argmax; this compiles the sampled paths'
    executor = ModelRunner(model, kv_cache, sampler, graphs, piecewise)
    grammars = GrammarCache(config.model, cfg.vocab_size, cfg.eos_token_ids)  # its tokenizer loads on first use
    runner = Runner(executor, limits, config.max_num_seqs, config.max_num_batched_tokens, grammars=grammars)
    if tp.size > 1 and tp.rank == 0:
        runner = LeaderRunner(runner, tp)  # the other ranks `follow` the steps it serves
    info = EngineInfo(
        worker_id, model_id, revision, cfg, max_len, config.block_size, num_blocks, config.max_num_seqs,
        config.max_num_batched_tokens, str(dtype).removeprefix("torch."), str(device),
    )
    shape = EmbeddingShape(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.vocab_size, max_len,
                           config.block_size, config.max_num_batched_tokens)
    # A preset name is no folder: it pools by the last token, not normalised. Under tensor parallelism an Embed
    # call would have to reach every rank, which only steps do: such a worker does not embed.
    embedder = Embedder(model, shape, PoolingConfig.from_folder(config.model, "last")) if tp.size == 1 else None
    return WorkerEngine(info, runner, model, embedder)
