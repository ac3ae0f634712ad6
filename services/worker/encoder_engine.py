"""Builds an embedding-only worker around a BERT-family encoder: weights, pooling, no KV cache and no runner."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from services.common.errors import InvalidArgument
from services.worker.checkpoint_files import model_revision
from services.worker.config import WorkerConfig
from services.worker.embedding import Embedder, EmbeddingShape
from services.worker.engine import EngineInfo, WorkerEngine
from services.worker.model_engine import resolve_device, resolve_dtype
from services.worker.models.encoder import build_encoder, init_dummy_encoder_weights, load_encoder_weights
from services.worker.models.encoder_config import EncoderConfig
from services.worker.ops import select_ops
from services.worker.pooling import PoolingConfig

def build_encoder_engine(config: WorkerConfig, use_kernels: bool | None = None) -> WorkerEngine:
    if config.load_format == "fake":
        raise InvalidArgument("an encoder folder cannot run in fake mode; use --load-format auto or dummy")
    folder = Path(config.model)
    cfg = EncoderConfig.from_folder(folder)
    pooling = PoolingConfig.from_folder(folder, "cls")
    limit = cfg.max_position_embeddings
    if config.max_model_len > limit:
        raise InvalidArgument(f"max_model_len {config.max_model_len} exceeds the model's limit {limit}")
    max_len = config.max_model_len or limit
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, cfg, device)
    model = build_encoder(cfg, select_ops(device, use_kernels), dtype, device)
    if config.load_format == "dummy":
        init_dummy_encoder_weights(model, config.seed)
    else:
        load_encoder_weights(model, folder)
    shape = EmbeddingShape(0, cfg.num_heads, cfg.head_dim, cfg.hidden_size, cfg.vocab_size, max_len,
                           config.block_size, config.max_num_batched_tokens)
    info = EngineInfo(
        worker_id=config.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        model_id=config.model_id or folder.resolve().name,
        model_revision=model_revision(folder, config.load_format),
        model=cfg, max_model_len=max_len, block_size=config.block_size, num_kv_blocks=0,
        max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        dtype=str(dtype).removeprefix("torch."), device=str(device), task="embed",
    )
    return WorkerEngine(info, None, model, Embedder(model, shape, pooling))
