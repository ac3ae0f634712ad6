"""Builds a worker from its configuration: model config, weights, KV cache, graphs, sampler and Runner."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument
from services.worker.config import CPU_DEFAULT_KV_BLOCKS, FAKE_DEFAULT_KV_BLOCKS, WorkerConfig
from services.worker.model_config import ModelConfig
from services.worker.models.encoder_config import EncoderConfig, is_encoder_folder
from services.worker.presets import PRESETS, preset_config
from services.worker.executors import FakeExecutor
from services.worker.runner import Runner
from services.worker.sequences import SequenceLimits

if TYPE_CHECKING:
    from services.worker.embedding import Embedder
    from services.worker.parallel.group import TensorParallelGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """What Worker.Info reports."""

    worker_id: str
    model_id: str
    model_revision: str
    model: ModelConfig | EncoderConfig
    max_model_len: int
    block_size: int
    num_kv_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    dtype: str
    device: str
    task: str = "generate"  # "embed": an encoder, no KV cache and no generation (a decoder embeds too)


class Engine:
    """A built worker: `runner` steps plans (None for an embedding-only encoder), `embedder` pools hidden states
    (None in fake mode)."""

    def __init__(self, info: EngineInfo, runner: Runner | None, model=None,  # noqa: ANN001 - an nn.Module
                 embedder: Embedder | None = None) -> None:
        self.info = info
        self.runner = runner
        self.model = model
        self.embedder = embedder

    def embed(self, inputs: list[list[int]], normalize: bool | None = None, dimensions: int = 0) -> list[list[float]]:
        if self.embedder is None:
            raise InvalidArgument("this worker has no model to embed with (fake mode, or tensor parallel)")
        return self.embedder.embed(inputs, normalize, dimensions)


def resolve_model_config(config: WorkerConfig) -> tuple[ModelConfig, str, str]:
    """(model config, model id, revision) of a checkpoint folder, or of a preset for dummy and fake modes."""
    folder = Path(config.model)
    if (folder / "config.json").is_file():
        from services.worker.checkpoint_files import model_revision

        cfg = ModelConfig.from_folder(folder)
        return cfg, config.model_id or folder.resolve().name, model_revision(folder, config.load_format)
    if config.model in PRESETS:
        if config.load_format == "auto":
            raise InvalidArgument(f"preset {config.model!r} has no weights; use --load-format dummy or fake")
        digest = hashlib.sha256(json.dumps(PRESETS[config.model], sort_keys=True).encode()).hexdigest()[:12]
        return preset_config(config.model), config.model_id or config.model, f"{config.load_format}-{digest}"
    raise InvalidArgument(f"--model {config.model!r} is neither a folder with config.json nor a preset ({', '.join(PRESETS)})")


def max_model_len_of(config: WorkerConfig, cfg: ModelConfig) -> int:
    limit = cfg.max_position_embeddings
    if cfg.sliding_window is not None:
        limit = min(limit, cfg.sliding_window)  # no sliding-window attention: stay within one window
    if config.max_model_len > limit:
        raise InvalidArgument(f"max_model_len {config.max_model_len} exceeds the model's limit {limit}")
    return config.max_model_len or limit


def fit_max_model_len(max_len: int, num_kv_blocks: int, block_size: int, explicit: bool) -> int:
    """max_len, or what the KV cache holds when that is less (a sequence must fit the cache whole): capped, with
    a warning that says so and from what."""
    capacity = num_kv_blocks * block_size
    if capacity >= max_len:
        return max_len
    source = "--max-model-len" if explicit else "the model's limit"
    log.warning("max_model_len capped from %d (%s) to %d: the KV cache holds only %d blocks of %d tokens; raise "
                "--num-kv-blocks or --gpu-memory-utilization for more", max_len, source, capacity, num_kv_blocks,
                block_size)
    return capacity


def fake_token_id(config: WorkerConfig, cfg: ModelConfig) -> int:
    if config.fake_token_id >= 0:
        if config.fake_token_id >= cfg.vocab_size or config.fake_token_id in cfg.eos_token_ids:
            raise InvalidArgument(f"fake_token_id {config.fake_token_id} must be a non-EOS id below {cfg.vocab_size}")
        return config.fake_token_id
    return next(t for t in range(cfg.vocab_size) if t not in cfg.eos_token_ids)


def build_engine(config: WorkerConfig, use_kernels: bool | None = None, tp: TensorParallelGroup | None = None) -> Engine:
    """use_kernels: None picks Triton kernels on CUDA and torch references elsewhere (tests force either).
    tp: this process's rank among config.tensor_parallel_size, already joined (None: a single device)."""
    if is_encoder_folder(config.model):
        if config.tensor_parallel_size > 1:
            raise InvalidArgument("tensor parallelism serves decoder models; an encoder runs on one device")
        from services.worker.encoder_engine import build_encoder_engine

        return build_encoder_engine(config, use_kernels)
    cfg, model_id, revision = resolve_model_config(config)
    max_len = max_model_len_of(config, cfg)
    worker_id = config.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    if config.load_format == "fake":
        num_blocks = config.num_kv_blocks or FAKE_DEFAULT_KV_BLOCKS
        max_len = fit_max_model_len(max_len, num_blocks, config.block_size, bool(config.max_model_len))
        limits = SequenceLimits(config.block_size, num_blocks, max_len, cfg.vocab_size)
        runner = Runner(FakeExecutor(fake_token_id(config, cfg)), limits, config.max_num_seqs,
                        config.max_num_batched_tokens)
        info = EngineInfo(worker_id, model_id, revision, cfg, max_len, config.block_size, num_blocks,
                          config.max_num_seqs, config.max_num_batched_tokens, cfg.dtype, "none")
        return Engine(info, runner)
    from services.worker.model_engine import build_model_engine

    return build_model_engine(config, cfg, model_id, revision, max_len, worker_id, use_kernels, tp)


__all__ = ["CPU_DEFAULT_KV_BLOCKS", "Engine", "EngineInfo", "build_engine"]
