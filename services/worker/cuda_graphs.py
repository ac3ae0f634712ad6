"""CUDA graphs of the decode step, one per bucketed batch size, replayed instead of launching every kernel.

A decode step of a small model is a few hundred short kernels; launched one by one from Python it is bound by
the host. Each graph is captured with static input buffers (token ids, positions, slot mapping, block tables,
context lengths) and a static logits output; a step copies its inputs into the buffers of the smallest bucket
that fits and replays. Padding rows write nowhere (slot -1) and attend to one entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kernels.decode_attention import DecodeConfig, choose_num_splits
from services.worker.attention_metadata import AttentionMetadata, SeqChunk
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8, up to and including max_num_seqs."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return sorted({*sizes, max_num_seqs})


class DecodeGraphs:
    """Captured decode graphs of one model and KV cache."""

    def __init__(self, model: CausalDecoder, kv_cache: KVCache, max_num_seqs: int, max_model_len: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.buckets = batch_buckets(max_num_seqs)
        self.max_blocks = -(-max_model_len // kv_cache.block_size)
        device = kv_cache.data.device
        n = self.buckets[-1]
        # Inputs travel in two copies per step, from pinned host staging buffers into static device buffers:
        # int64 rows (token ids, positions, slots) and int32 (context lengths, then block tables row-major).
        self.stage64 = torch.zeros((3, n), dtype=torch.int64).pin_memory()
        self.stage32 = torch.zeros(n + n * self.max_blocks, dtype=torch.int32).pin_memory()
        self.static64 = torch.zeros((3, n), dtype=torch.int64, device=device)
        self.static32 = torch.zeros(n + n * self.max_blocks, dtype=torch.int32, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.static64[0], self.static64[1], self.static64[2]
        self.context_lens = self.static32[:n]
        self.block_tables = self.static32[n:].view(n, self.max_blocks)
        self.stage64[2].fill_(-1)
        self.stage32[:n].fill_(1)
        self.static64.copy_(self.stage64)
        self.static32.copy_(self.stage32)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # bucket → [bucket, vocab] fp32 output of its graph

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def _metadata(self, bs: int) -> AttentionMetadata:
        splits = choose_num_splits(bs, self.model.cfg.num_kv_heads, self.max_model_len, DecodeConfig())
        return AttentionMetadata(
            positions=self.positions[:bs],
            slot_mapping=self.slot_mapping[:bs],
            block_tables=self.block_tables[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            context_lens=self.context_lens[:bs],
            max_query_len=1,
            max_context_len=self.max_model_len,  # an upper bound: the graph must not depend on the batch
            decode_num_splits=splits,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:bs], self._metadata(bs), self.kv_cache.layers)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every bucket, largest first, all in one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for bs in reversed(self.buckets):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(bs)  # warm-up: compiles kernels, settles allocations outside the graph
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[bs] = self._forward(bs)
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def bucket_for(self, num_seqs: int) -> int | None:
        for bs in self.buckets:
            if bs >= num_seqs:
                return bs
        return None

    @torch.inference_mode()
    def run(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk]) -> torch.Tensor:
        """Logits [len(chunks), vocab] fp32 of a decode step (every chunk runs one token)."""
        n = len(chunks)
        bs = self.bucket_for(n)
        if bs is None or bs not in self.graphs:
            raise ValueError(f"no decode graph for {n} sequences (largest is {self.max_batch})")
        bsz, n_max = self.kv_cache.block_size, self.buckets[-1]
        host64 = self.stage64.numpy()  # [3, n_max]: token ids, positions, slots
        host32 = self.stage32.numpy()  # [n_max]: context lengths, then [n_max, max_blocks] block tables
        tables = host32[n_max:].reshape(n_max, self.max_blocks)
        positions = host64[1, :n]
        positions[:] = np.fromiter((c.start for c in chunks), dtype=np.int64, count=n)
        for i, chunk in enumerate(chunks):
            tables[i, : len(chunk.block_ids)] = chunk.block_ids
        host64[0, :n] = token_ids
        host64[2, :n] = tables[np.arange(n), positions // bsz].astype(np.int64) * bsz + positions % bsz
        host32[:n] = positions + 1
        # Padding rows of the bucket write nowhere and attend to one entry.
        host64[2, n:bs] = -1
        host32[n:bs] = 1
        self.static64.copy_(self.stage64, non_blocking=True)
        used = n_max + bs * self.max_blocks
        self.static32[:used].copy_(self.stage32[:used], non_blocking=True)
        self.graphs[bs].replay()
        return self.logits[bs][:n]
