"""Runs the decoder on one step's chunks and returns the logits of the rows that sample (or, for an all-greedy
decode step under CUDA graphs, the argmax tokens the graph computed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from services.worker.attention_metadata import SeqChunk, build_attention_metadata, to_device
from services.worker.cuda_graphs import DecodeGraphs, InputFill
from services.worker.device_gaps import DeviceGaps
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder
from services.worker.piecewise_graphs import PiecewiseGraphs


class ModelRunner:
    """The model, its KV cache and (on CUDA) its decode graphs and the piecewise graphs of other steps."""

    def __init__(
        self, model: CausalDecoder, kv_cache: KVCache, graphs: DecodeGraphs | None = None,
        piecewise: PiecewiseGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.graphs = graphs
        self.piecewise = piecewise
        self.device = kv_cache.data.device
        self.gaps = DeviceGaps(self.device)  # the executor marks where each step starts and ends on the device

    def graphed(self, chunks: Sequence[SeqChunk]) -> bool:
        """Whether the step runs as a captured decode graph (every chunk one token, within the largest bucket)."""
        return (
            self.graphs is not None
            and len(chunks) <= self.graphs.max_batch
            and all(c.num_tokens == 1 for c in chunks)
        )

    def device_index(self, values: Sequence[int]) -> torch.Tensor:
        """values as an int64 index tensor on the model's device."""
        return to_device(np.asarray(values, dtype=np.int64), self.device)

    @torch.inference_mode()
    def forward(
        self, token_ids: Sequence[int], chunks: Sequence[SeqChunk], sample_rows: Sequence[int],
        fill: InputFill | None = None,
    ) -> torch.Tensor:
        """token_ids: the chunks' tokens, concatenated (positions named by `fill` are overwritten on the device).
        Returns fp32 logits [len(sample_rows), vocab] of the last token of each chunk listed in sample_rows."""
        if self.graphed(chunks):
            self.graphs.run(token_ids, chunks, fill)
            return self.graphs.logits_of(sample_rows)
        meta = build_attention_metadata(chunks, self.kv_cache.block_size, self.device)
        if meta.num_decode_seqs and self.graphs is not None:
            meta = self.graphs.with_graph_decode_tiling(meta)
        input_ids = to_device(np.asarray(token_ids, dtype=np.int64), self.device)
        if fill is not None:
            input_ids.index_copy_(0, fill[0], fill[1])
        if self.piecewise is not None and input_ids.shape[0] <= self.piecewise.max_tokens:
            hidden = self.piecewise.run(input_ids, meta)  # [num_tokens, hidden]
        else:
            hidden = self.model(input_ids, meta, self.kv_cache.layers)  # [num_tokens, hidden]
        last = np.cumsum([c.num_tokens for c in chunks]) - 1  # row of each chunk's last token
        rows = to_device(last[list(sample_rows)].astype(np.int64), self.device)
        return self.model.compute_logits(hidden.index_select(0, rows))

    def graph_argmax(
        self, token_ids: Sequence[int], chunks: Sequence[SeqChunk], fill: InputFill | None = None
    ) -> torch.Tensor:
        """Replays a graphed decode step (see `graphed`); returns every row's argmax token, [len(chunks)] int64 on
        the device, in a buffer the next replay overwrites."""
        if not self.graphed(chunks):
            raise ValueError("graph_argmax needs a decode step that fits the captured graphs")
        self.graphs.run(token_ids, chunks, fill)
        return self.graphs.sampled_of()

    def greedy_decode(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk]) -> list[int]:
        """A graphed decode step (see `graphed`) whose every row takes the argmax: the argmax token per chunk,
        computed inside the graph, read back in the step's only device-to-host copy."""
        if not self.graphed(chunks):
            raise ValueError("greedy_decode needs a decode step that fits the captured graphs")
        self.graphs.run(token_ids, chunks)
        return self.graphs.token_ids_of()
