"""Runs the decoder on one step's chunks and returns the logits of the rows that sample (or, for an all-greedy
decode step under CUDA graphs, the argmax tokens the graph computed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.cuda_graphs import DecodeGraphs
from services.worker.device_tokens import DeviceTokens, TokenSlots
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder


class ModelRunner:
    """The model, its KV cache and (on CUDA) its decode graphs."""

    def __init__(self, model: CausalDecoder, kv_cache: KVCache, graphs: DecodeGraphs | None = None) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.graphs = graphs
        self.device = kv_cache.data.device
        self.token_slots: TokenSlots | None = None  # made at the first launch, sized for max_num_seqs rows

    def graphed(self, chunks: Sequence[SeqChunk]) -> bool:
        """Whether the step runs as a captured decode graph (every chunk one token, within the largest bucket)."""
        return (
            self.graphs is not None
            and len(chunks) <= self.graphs.max_batch
            and all(c.num_tokens == 1 for c in chunks)
        )

    @torch.inference_mode()
    def forward(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk], sample_rows: Sequence[int]) -> torch.Tensor:
        """token_ids: the chunks' tokens, concatenated. Returns fp32 logits [len(sample_rows), vocab] of the last
        token of each chunk listed in sample_rows."""
        if self.graphed(chunks):
            self.graphs.run(token_ids, chunks)
            return self.graphs.logits_of(sample_rows)
        meta = build_attention_metadata(chunks, self.kv_cache.block_size, self.device)
        input_ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)).to(self.device, non_blocking=True)
        hidden = self.model(input_ids, meta, self.kv_cache.layers)  # [num_tokens, hidden]
        last = np.cumsum([c.num_tokens for c in chunks]) - 1  # row of each chunk's last token
        rows = torch.as_tensor(last[list(sample_rows)], dtype=torch.int64).to(self.device, non_blocking=True)
        return self.model.compute_logits(hidden.index_select(0, rows))

    def greedy_decode(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk]) -> list[int]:
        """A graphed decode step (see `graphed`) whose every row takes the argmax: the argmax token per chunk,
        computed inside the graph, read back in the step's only device-to-host copy."""
        if not self.graphed(chunks):
            raise ValueError("greedy_decode needs a decode step that fits the captured graphs")
        self.graphs.run(token_ids, chunks)
        return self.graphs.token_ids_of()

    @torch.inference_mode()
    def launch_greedy(
        self, token_ids: Sequence[int], chunks: Sequence[SeqChunk], prev: DeviceTokens | None = None
    ) -> DeviceTokens:
        """Queues a decode step (every chunk one token) whose every row takes the argmax, without waiting for it.
        prev: the launched step whose tokens are this step's inputs, row for row (token_ids is then ignored).
        The argmax is the one the sampler gives a plain-greedy row: in the graph, or torch's on eager logits."""
        if any(c.num_tokens != 1 for c in chunks):
            raise ValueError("launch_greedy runs decode steps only (one token per chunk)")
        if prev is not None and prev.tokens.shape[0] != len(chunks):
            raise ValueError(f"the previous step has {prev.tokens.shape[0]} rows, this one {len(chunks)}")
        if self.token_slots is None:
            rows = self.graphs.max_batch if self.graphs is not None else 0
            self.token_slots = TokenSlots(max(rows, len(chunks), 1), self.device)
        if self.token_slots.max_rows < len(chunks):
            self.token_slots = TokenSlots(len(chunks), self.device)
        inputs = None if prev is None else prev.tokens
        if self.graphed(chunks):
            self.graphs.run(token_ids, chunks, inputs)
            return DeviceTokens(self.token_slots, self.graphs.sampled_of())
        meta = build_attention_metadata(chunks, self.kv_cache.block_size, self.device)
        if inputs is None:
            inputs = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)).to(self.device, non_blocking=True)
        hidden = self.model(inputs, meta, self.kv_cache.layers)  # [num_seqs, hidden]: one token per chunk
        return DeviceTokens(self.token_slots, self.model.compute_logits(hidden).argmax(dim=-1))
