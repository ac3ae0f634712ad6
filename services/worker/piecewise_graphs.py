"""CUDA graphs of prefill and mixed steps, captured piecewise: everything but attention.

A step that runs prompt chunks cannot replay a decode graph: its attention depends on how the step's tokens split
into sequences (query lengths, prefix hits, the decode rows in front), which no fixed graph knows. Everything else
in the step treats each token alone: the embedding, the norms, the projections, the MLP and the rotary-and-cache
write. So each layer's work is cut at attention: one graph per gap between two attentions, captured per bucket of
the step's token count, and attention runs eagerly in between on the step's real tokens. A launch-bound step of a
few hundred tokens then costs the host one replay per layer plus the attention kernels, instead of every kernel.

Pieces of a model with L layers, for a bucket of T tokens (the step's n tokens padded to T):
  piece 0:      embed, layer 0 up to its attention (norm, qkv projection, rotary, cache write) -> q, residual
  piece i:      layer i-1 after its attention (o_proj, norm, MLP), layer i up to its attention -> q, residual
  piece L:      layer L-1 after its attention, the final norm -> hidden
Padding rows (n..T) carry earlier tokens' ids and positions and slot -1, so they write no cache entry; every op of
a piece is row-wise, so their values never reach the real rows, and attention never sees them.
"""

from __future__ import annotations

from functools import partial

import torch

from services.worker.attention_metadata import AttentionMetadata
from services.worker.graph_capture import capture_graph
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder


def token_buckets(max_tokens: int) -> list[int]:
    """16, 32, 64, then every 128 up to 1024 and every 256 past it, up to max_tokens (included, rounded up to a
    multiple of 16): past 1024 tokens a bucket pads a step by less than 256 tokens."""
    top = -(-max_tokens // 16) * 16
    sizes = [16, 32, 64, *range(128, 1024, 128), *range(1024, top, 256)]
    return sorted({*(s for s in sizes if s < top), top})


class PiecewiseGraphs:
    """The piecewise graphs of one model and KV cache for steps of up to max_tokens tokens. Without `capture` (and
    on the CPU) the same pieces run eagerly on the same padded buffers."""

    def __init__(self, model: CausalDecoder, kv_cache: KVCache, max_tokens: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.buckets = token_buckets(max_tokens)
        cfg = model.cfg
        n = self.buckets[-1]
        weight = model.model.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.residual = torch.zeros(n, cfg.hidden_size, dtype=dtype, device=device)  # [n, hidden]
        self.q = torch.zeros(n, cfg.num_heads, cfg.head_dim, dtype=dtype, device=device)
        self.attn = torch.zeros(n, cfg.num_heads, cfg.head_dim, dtype=dtype, device=device)
        self.hidden = torch.zeros(n, cfg.hidden_size, dtype=dtype, device=device)  # [n, hidden], final norm
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}  # bucket → L + 1 pieces

    @property
    def max_tokens(self) -> int:
        return self.buckets[-1]

    @property
    def num_graphs(self) -> int:
        return sum(len(pieces) for pieces in self.graphs.values())

    def bucket_for(self, num_tokens: int) -> int | None:
        for size in self.buckets:
            if size >= num_tokens:
                return size
        return None

    def _piece_meta(self, size: int) -> AttentionMetadata:
        """What a piece reads of the metadata (positions and slots, for the rotary and cache write)."""
        return AttentionMetadata(
            positions=self.positions[:size], slot_mapping=self.slot_mapping[:size], block_tables=self.slot_mapping[:0],
            query_start_loc=self.slot_mapping[:0], context_lens=self.slot_mapping[:0], max_query_len=0,
            max_context_len=0,
        )

    def _piece(self, index: int, size: int) -> None:
        """Piece `index` of a bucket of `size` tokens, reading and writing the static buffers."""
        model, layers = self.model, self.model.model.layers
        caches = self.kv_cache.layers
        meta = self._piece_meta(size)
        if index == 0:
            x, residual = model.model.embed_tokens(self.input_ids[:size]), None
        else:
            x, residual = layers[index - 1].after_attention(self.attn[:size], self.residual[:size])
        if index == len(layers):
            x, _ = model.model.norm(x, residual)
            self.hidden[:size].copy_(x)
            return
        # Written straight into the buffers the attention and the next piece read: no copy per layer.
        layers[index].before_attention(x, residual, meta, caches[index], model.rope, q_out=self.q[:size],
                                       residual_out=self.residual[:size])

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every bucket's pieces, largest bucket first, all in one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        num_pieces = len(self.model.model.layers) + 1
        saved = self.slot_mapping.clone()
        self.slot_mapping.fill_(-1)  # warm-up runs write no cache entry
        for size in reversed(self.buckets):
            pieces = []
            for index in range(num_pieces):
                pieces.append(capture_graph(partial(self._piece, index, size), pool, stream,
                                            f"piece {index} of steps of {size} tokens"))
            self.graphs[size] = pieces
        self.slot_mapping.copy_(saved)
        torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids [n] int64 on the device and the step's metadata → final normed hidden states [n, hidden] (a view
        of a buffer the next run overwrites)."""
        n = input_ids.shape[0]
        size = self.bucket_for(n)
        if size is None:
            raise ValueError(f"a step of {n} tokens exceeds the piecewise graphs' {self.max_tokens}")
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(meta.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        pieces = self.graphs.get(size)
        layers, caches = self.model.model.layers, self.kv_cache.layers
        for index, (layer, cache) in enumerate(zip(layers, caches, strict=True)):
            if pieces is None:
                self._piece(index, size)
            else:
                pieces[index].replay()
            # Every layer's attention gets the same metadata and buffers and a cache of one allocation: the first
            # layer's launches check the arguments, the others skip the checks.
            layer.self_attn.attend(self.q[:n], meta, cache, out=self.attn[:n], checked=index > 0)
        if pieces is None:
            self._piece(len(layers), size)
        else:
            pieces[-1].replay()
        return self.hidden[:n]
