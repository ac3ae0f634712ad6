"""A built worker: what Worker.Info reports, and the runner and embedder the servicer calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument
from services.worker.model_config import ModelConfig
from services.worker.models.encoder_config import EncoderConfig

if TYPE_CHECKING:
    from services.worker.embedding import Embedder
    from services.worker.runner import Runner

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


class WorkerEngine:
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
