"""CUDA graphs of the decode step, one per (batch size bucket, context length bucket), replayed instead of
launching every kernel.

A decode step of a small model is a few hundred short kernels; launched one by one from Python it is bound by
the host. Each graph reads static input buffers (filled by `DecodeInputs`: one host-to-device copy of what the
step's rows read, then the used corner of the block tables scattered into place on the device) and writes a static
logits buffer (the model's dtype) and the rows' argmax (the greedy token), so an all-greedy step needs nothing on
the host but reading the token ids back. Padding rows write nowhere (slot -1) and attend to one entry.

The decode attention kernel's split count is fixed at capture. A graph for contexts up to max_model_len splits
each sequence across the chip (and merges the splits in a second kernel); short contexts get their own graph,
split only as far as a short context fills splits (few sequences: a few splits of min_split_len keys; many: one),
so fewer split programs find nothing to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch

from kernels.decode_attention import choose_num_splits, decode_config_device, default_decode_config
from services.worker.attention_metadata import AttentionMetadata
from services.worker.decode_inputs import DecodeInputs
from services.worker.graph_capture import capture_graph
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder

# (positions in the step's concatenated tokens [k] int64, their tokens [k] int64), both on the device; positions None:
# the first k positions, in order (every row of a decode continuing the step before, row for row).
InputFill = tuple[torch.Tensor | None, torch.Tensor]


def fill_inputs(input_ids: torch.Tensor, fill: InputFill) -> None:
    """Writes a fill's tokens into a step's input ids on the device, in stream order (one kernel: the common case,
    where the positions are the first k, needs no index on the device)."""
    positions, tokens = fill
    if positions is None:
        input_ids[: tokens.shape[0]].copy_(tokens)
    else:
        input_ids.index_copy_(0, positions, tokens.to(input_ids.dtype))


SHORT_CONTEXT_LEN = 512  # contexts up to this many tokens run the decode kernel split for this many at most


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to 256 and of 32 past it, up to and including max_num_seqs (past 256
    a step pads at most 31 rows, and the graphs to capture stay few)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, min(max_num_seqs, 257), 8)) + list(range(288, max_num_seqs, 32))
    return sorted({*sizes, max_num_seqs})


def context_buckets(num_seqs: int, num_kv_heads: int, max_model_len: int, short_len: int, block_size: int = 16,
                    device: torch.device | None = None) -> list[tuple[int, int]]:
    """(longest context, decode splits) of each graph captured for a batch of `num_seqs`, shortest first. The splits
    are what the decode kernel would pick for the device and page size (kernels.decode_attention)."""
    cfg = default_decode_config(num_seqs, num_kv_heads, 0, block_size, device)
    full = choose_num_splits(num_seqs, num_kv_heads, max_model_len, cfg)
    if full == 1 or short_len <= 0 or short_len >= max_model_len:
        return [(max_model_len, full)]
    return [(short_len, choose_num_splits(num_seqs, num_kv_heads, short_len, cfg)), (max_model_len, full)]


class DecodeGraphs:
    """Captured decode graphs of one model and KV cache."""

    def __init__(
        self, model: CausalDecoder, kv_cache: KVCache, max_num_seqs: int, max_model_len: int,
        short_context_len: int = SHORT_CONTEXT_LEN,
    ) -> None:
        if kv_cache.num_blocks * kv_cache.block_size >= 2**31:
            raise ValueError("decode graphs pass slots as int32; the KV cache has 2**31 slots or more")
        self.model = model
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.buckets = batch_buckets(max_num_seqs)
        self.contexts = {bs: context_buckets(bs, model.cfg.num_kv_heads, max_model_len, short_context_len,
                                             kv_cache.block_size, kv_cache.data.device)
                         for bs in self.buckets}
        self.max_blocks = -(-max_model_len // kv_cache.block_size)
        device = kv_cache.data.device
        n = self.buckets[-1]
        size = DecodeInputs.size(n, self.max_blocks)
        self.staging = torch.zeros(size, dtype=torch.int32, pin_memory=True)
        self.inputs = DecodeInputs(self.staging.numpy(), n, self.max_blocks, kv_cache.block_size)
        self.static = self.staging.to(device)  # [size] int32, laid out as the staging array
        self.input_ids, self.positions, self.slot_mapping, self.context_lens = DecodeInputs.fields(self.static, n)
        # [n, max_blocks]: each step's [bucket, columns] corner arrives packed after the input fields (see
        # DecodeInputs) and is scattered here on the device.
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        dtype = model.model.embed_tokens.weight.dtype  # the model's, whichever kind of head projects the logits
        self.logits = torch.zeros((n, model.shard.vocab_width), dtype=dtype, device=device)  # [n, vocab]
        self.sampled = torch.zeros(n, dtype=torch.int64, device=device)  # [n] argmax of each logits row
        self.sampled_host = torch.zeros(n, dtype=torch.int64, pin_memory=True)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (bucket, longest context) → graph
        self.num_rows = 0  # rows of the last step
        self.last_key: tuple[int, int] | None = None  # graph of the last step
        # Recorded after each input copy: the host waits on it before refilling the staging array.
        self.copied = torch.cuda.Event()

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    def _metadata(self, bs: int, max_context_len: int, num_splits: int) -> AttentionMetadata:
        return AttentionMetadata(
            positions=self.positions[:bs],
            slot_mapping=self.slot_mapping[:bs],
            block_tables=self.block_tables[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            context_lens=self.context_lens[:bs],
            max_query_len=1,
            max_context_len=max_context_len,  # an upper bound: the graph must not depend on the batch
            decode_num_splits=num_splits,
        )

    def _forward(self, bs: int, max_context_len: int, num_splits: int) -> None:
        hidden = self.model(self.input_ids[:bs], self._metadata(bs, max_context_len, num_splits), self.kv_cache.layers)
        logits = self.logits[:bs]
        self.model.project_logits(hidden, out=logits)
        self.model.ops.argmax(logits, out=self.sampled[:bs])

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every graph, largest batch first, all in one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for bs in reversed(self.buckets):
            for max_context_len, num_splits in self.contexts[bs]:
                self.graphs[(bs, max_context_len)] = capture_graph(
                    partial(self._forward, bs, max_context_len, num_splits), pool, stream,
                    f"the decode graph of {bs} rows up to {max_context_len} tokens")
        torch.cuda.synchronize()

    def bucket_for(self, num_seqs: int) -> int | None:
        for bs in self.buckets:
            if bs >= num_seqs:
                return bs
        return None

    def graph_key(self, num_seqs: int, longest_context: int) -> tuple[int, int]:
        bs = self.bucket_for(num_seqs)
        if bs is None:
            raise ValueError(f"no decode graph for {num_seqs} sequences (largest is {self.max_batch})")
        if longest_context > self.max_model_len:
            raise ValueError(f"context of {longest_context} tokens exceeds max_model_len {self.max_model_len}")
        fits = [limit for limit, _ in self.contexts[bs] if longest_context <= limit]  # the last is max_model_len
        return bs, fits[0]

    def with_graph_decode_tiling(self, meta: AttentionMetadata) -> AttentionMetadata:
        """A mixed step's metadata whose decode rows run the decode kernel exactly as the graph of their batch
        bucket and context bound runs it (splits, context bound, tiling): a kernel variant compiled at capture,
        instead of one that would compile mid-serving on the first step of a new shape."""
        bs, limit = self.graph_key(meta.num_decode_seqs, meta.decode_max_context_len)
        splits = dict(self.contexts[bs])[limit]
        cache = self.kv_cache
        config = default_decode_config(bs, self.model.cfg.num_kv_heads, splits, cache.block_size,
                                       decode_config_device(cache.data))
        return replace(meta, decode_max_context_len=limit, decode_num_splits=splits, decode_config=config)

    @torch.inference_mode()
    def run(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]],
        fill: InputFill | None = None,
    ) -> None:
        """Replays the decode step of len(positions) one-token rows (see `DecodeInputs.fill`); read `logits_of`,
        `token_ids_of` or `sampled_of` after. fill: rows whose input token the host does not know yet (sampled by a
        step queued earlier), with those tokens on the device; their entries of token_ids are ignored."""
        n = len(positions)
        bs = self.bucket_for(n)
        if bs is None:
            raise ValueError(f"no decode graph for {n} sequences (largest is {self.max_batch})")
        self.copied.synchronize()  # the last step's copy has left the staging array (at once after a sync)
        staged = self.inputs.fill(token_ids, positions, block_tables, bs)
        key = self.graph_key(n, staged.longest)
        if key not in self.graphs:
            raise ValueError(f"decode graph {key} was not captured")
        self.static[: staged.used].copy_(self.staging[: staged.used], non_blocking=True)
        self.copied.record()
        packed = self.static[DecodeInputs.packed_start(self.max_batch) : staged.used]  # [bs * columns]
        self.block_tables[:bs, : staged.columns].copy_(packed.view(bs, staged.columns))
        if fill is not None:  # int64 → int32, queued behind the step that sampled them
            fill_inputs(self.input_ids, fill)
        self.graphs[key].replay()
        self.num_rows = n
        self.last_key = key

    def logits_of(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """fp32 logits [len(rows), vocab] of the last step (every row when rows is None)."""
        logits = self.logits[: self.num_rows]
        if rows is not None and len(rows) != self.num_rows:
            logits = logits[list(rows)]
        return logits.float()

    def token_ids_of(self) -> list[int]:
        """The argmax token of every row of the last step: the one device-to-host copy, which waits for it."""
        host = self.sampled_host[: self.num_rows]
        host.copy_(self.sampled[: self.num_rows], non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return host.tolist()

    def sampled_of(self) -> torch.Tensor:
        """[rows of the last step] int64 on the device: the argmax, valid until the next replay."""
        return self.sampled[: self.num_rows]
