"""Builds a worker from its configuration: fake mode here (no torch), a decoder in model_engine.py, an encoder in
encoder_engine.py."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument
from services.worker.config import FAKE_DEFAULT_KV_BLOCKS, WorkerConfig
from services.worker.engine import EngineInfo, WorkerEngine, fit_max_model_len
from services.worker.executors import FakeExecutor
from services.worker.model_config import ModelConfig
from services.worker.models.encoder_config import is_encoder_folder
from services.worker.presets import PRESETS, preset_config
from services.worker.runner import Runner
from services.worker.sequences import SequenceLimits

if TYPE_CHECKING:
    from services.worker.parallel.group import TensorParallelGroup


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


def fake_token_id(config: WorkerConfig, cfg: ModelConfig) -> int:
    if config.fake_token_id >= 0:
        if config.fake_token_id >= cfg.vocab_size or config.fake_token_id in cfg.eos_token_ids:
            raise InvalidArgument(f"fake_token_id {config.fake_token_id} must be a non-EOS id below {cfg.vocab_size}")
        return config.fake_token_id
    return next(t for t in range(cfg.vocab_size) if t not in cfg.eos_token_ids)


def build_engine(
    config: WorkerConfig, use_kernels: bool | None = None, tp: TensorParallelGroup | None = None
) -> WorkerEngine:
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
        runner = Runner(FakeExecutor(fake_token_id(config, cfg), config.fake_step_ms / 1e3), limits, config.max_num_seqs,
                        config.max_num_batched_tokens)
        info = EngineInfo(worker_id, model_id, revision, cfg, max_len, config.block_size, num_blocks,
                          config.max_num_seqs, config.max_num_batched_tokens, cfg.dtype, "none")
        return WorkerEngine(info, runner)
    from services.worker.model_engine import build_model_engine

    return build_model_engine(config, cfg, model_id, revision, max_len, worker_id, use_kernels, tp)

