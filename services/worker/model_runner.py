"""The model side of a step (a StepExecutor): runs the decoder on the step's chunks and samples the rows that reach
the end of their tokens, either while the host waits (`run`) or queued on the device with the sampled tokens left
there for the next step (`launch`, then `collect`). An all-greedy decode step under CUDA graphs takes the argmax
the graph computed instead of sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from services.worker.attention_metadata import SeqChunk, step_metadata, to_device
from services.worker.cuda_graphs import DecodeGraphs, InputFill, fill_inputs
from services.worker.device_gaps import DeviceGaps
from services.worker.device_tokens import DeviceTokens
from services.worker.executors import Sampled, device_samplable
from services.worker.kv_cache import KVCache
from services.worker.models.decoder import CausalDecoder
from services.worker.piecewise_graphs import PiecewiseGraphs
from services.worker.sampler import Sampler
from services.worker.sampling.results import DeviceSample
from services.worker.sampling.types import SamplerOutput
from services.worker.sequences import StepSeq
from services.worker.step_inputs import StepInputs


class ModelRunner:
    """The model, its KV cache, its sampler and (on CUDA) its decode graphs and the piecewise graphs of other
    steps."""

    def __init__(
        self, model: CausalDecoder, kv_cache: KVCache, sampler: Sampler, graphs: DecodeGraphs | None = None,
        piecewise: PiecewiseGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.graphs = graphs
        self.piecewise = piecewise
        self.device = kv_cache.data.device
        self.gaps = DeviceGaps(self.device)  # run and launch mark where each step starts and ends on the device

    def graphed(self, chunks: Sequence[SeqChunk]) -> bool:
        """Whether the step runs as a captured decode graph (every chunk one token, within the largest bucket)."""
        return self._fits_graphs(len(chunks), all(c.num_tokens == 1 for c in chunks))

    def _fits_graphs(self, num_rows: int, one_token: bool) -> bool:
        return self.graphs is not None and one_token and num_rows <= self.graphs.max_batch

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
            self.graphs.run(token_ids, [c.start for c in chunks], [c.block_ids for c in chunks], fill)
            return self.graphs.logits_of(sample_rows)
        return self._forward_eager(token_ids, [c.start for c in chunks], [c.num_tokens for c in chunks],
                                   [c.block_ids for c in chunks], sample_rows, fill)

    def _forward_eager(
        self, token_ids: Sequence[int], starts: Sequence[int], num_tokens: Sequence[int],
        block_tables: Sequence[Sequence[int]], sample_rows: Sequence[int], fill: InputFill | None,
    ) -> torch.Tensor:
        """`forward` of a step past the decode graphs, given by its rows' columns (see `step_metadata`)."""
        meta, (input_ids, rows) = step_metadata(starts, num_tokens, block_tables, self.kv_cache.block_size,
                                                self.device, extra=(np.asarray(token_ids, dtype=np.int64),),
                                                sample_rows=sample_rows)
        if meta.num_decode_seqs and self.graphs is not None:
            meta = self.graphs.with_graph_decode_tiling(meta)
        if fill is not None:
            fill_inputs(input_ids, fill)
        if self.piecewise is not None and input_ids.shape[0] <= self.piecewise.max_tokens:
            hidden = self.piecewise.run(input_ids, meta)  # [num_tokens, hidden]
        else:
            hidden = self.model(input_ids, meta, self.kv_cache.layers)  # [num_tokens, hidden]
        return self.model.compute_logits(hidden.index_select(0, rows))

    def greedy_decode(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk]) -> list[int]:
        """A graphed decode step (see `graphed`) whose every row takes the argmax: the argmax token per chunk,
        computed inside the graph, read back in the step's only device-to-host copy."""
        if not self.graphed(chunks):
            raise ValueError("greedy_decode needs a decode step that fits the captured graphs")
        self.graphs.run(token_ids, [c.start for c in chunks], [c.block_ids for c in chunks])
        return self.graphs.token_ids_of()

    @torch.inference_mode()
    def _forward(self, inputs: StepInputs, fill: InputFill | None = None) -> torch.Tensor:
        """`forward` of a step's inputs: a graphed step reads their columns as they are."""
        if self._fits_graphs(inputs.num_rows, inputs.one_token):
            self.graphs.run(inputs.token_ids, inputs.starts, inputs.block_tables, fill)
            return self.graphs.logits_of(inputs.sample_rows)
        return self._forward_eager(inputs.token_ids, inputs.starts, inputs.num_tokens, inputs.block_tables,
                                   inputs.sample_rows, fill)

    # ---- a step's sequences (StepExecutor) ----

    def take_device_idle_s(self) -> float:
        return self.gaps.take_idle_s()

    def waited_for_work(self) -> None:
        self.gaps.forget_last_step()

    def run(self, scheduled: Sequence[StepSeq]) -> list[Sampled | None]:
        # The step starts on the device once the host has its rows' inputs: the time spent building them is idle.
        inputs = StepInputs.of(scheduled)
        gaps = self.gaps
        gaps.step_started()
        try:
            return self._run(inputs)
        finally:
            gaps.step_ended()

    def _run(self, inputs: StepInputs) -> list[Sampled | None]:
        sample_rows = inputs.sample_rows
        results: list[Sampled | None] = [None] * inputs.num_rows
        if sample_rows and self._fits_graphs(inputs.num_rows, inputs.one_token) and inputs.plain_greedy:
            # The graph took every row's argmax: the sampler would answer the same, so it is skipped.
            self.graphs.run(inputs.token_ids, inputs.starts, inputs.block_tables)
            token_ids = self.graphs.token_ids_of()
            for i in sample_rows:
                results[i] = (token_ids[i], None)
            return results
        if not sample_rows:
            self._forward(inputs)
            return results
        logits = self._forward(inputs)  # [len(sample_rows), vocab]
        out = self.sampler(logits, inputs.sampling_rows)
        for j, i in enumerate(sample_rows):
            results[i] = (out.token_ids[j], out.logprobs[j])
        return results

    def can_launch(self, scheduled: Sequence[StepSeq]) -> bool:
        """Whether the step can be queued on the device with its sampled tokens left there: every sampling row's
        token depends only on its logits, its parameters and how many tokens it has generated (see
        `device_samplable`). Prefill chunks, new sequences and rows that sample nothing always qualify."""
        return bool(scheduled) and all(device_samplable(seq.state) for seq in scheduled if seq.samples)

    def launch(self, scheduled: Sequence[StepSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues a step that `can_launch` and its sampling, without waiting for either. A row whose last input
        token is still PENDING_TOKEN takes the token `prev` (the step queued just before) sampled for it. When
        such a row is guided, its mask needs that token on the host first: the sampling is then held back, and the
        caller queues it with `DeviceTokens.draw_now` once the token has advanced the row's matcher."""
        inputs = StepInputs.of(scheduled)  # before the step's start on the device, as in `run`
        gaps = self.gaps
        gaps.step_started()
        try:
            return self._launch(inputs, prev)
        finally:
            gaps.step_ended()

    def _launch(self, inputs: StepInputs, prev: DeviceTokens | None) -> DeviceTokens:
        fill = None
        if inputs.pending_positions:
            if prev is not None and inputs.pending_seq_ids == prev.seq_ids:  # row for row, as a decode continues
                source = prev.tokens  # [rows of prev] int64
            else:
                prev_rows = inputs.pending_rows(prev)  # raises without a step before
                source = prev.tokens.index_select(0, self.device_index(prev_rows))
            positions = inputs.pending_positions  # increasing: the first k when the last is k - 1
            fill = (None if positions[-1] == len(positions) - 1 else self.device_index(positions), source)
        seq_ids = inputs.sample_seq_ids
        if not inputs.sample_rows:
            self._forward(inputs, fill)
            return DeviceTokens(None, seq_ids)
        if self._fits_graphs(inputs.num_rows, inputs.one_token) and inputs.plain_greedy:
            # Every row samples and takes the argmax the graph computed; cloned before the next replay reuses it.
            self.graphs.run(inputs.token_ids, inputs.starts, inputs.block_tables, fill)
            tokens = self.graphs.sampled_of().clone()
            return DeviceTokens(DeviceSample.pack(tokens, None, None, (), ()), seq_ids)
        logits = self._forward(inputs, fill)  # [len(sample_rows), vocab]
        rows = inputs.sampling_rows
        if inputs.guided_pending:
            # Nothing runs on the device between this forward pass and the held-back sampling (graphed logits
            # stay valid): the runner draws before it queues another step.
            def draw() -> DeviceSample:
                batch = self.sampler.prepare(logits, rows)  # fills the masks
                self.gaps.step_started()  # from the forward pass's end to here, the device waited for the masks
                sample = self.sampler.sample_prepared(logits, batch)
                self.gaps.step_ended()
                return sample

            return DeviceTokens(None, seq_ids, draw=draw)
        # The guided rows' masks are filled on the host while the device runs the forward pass queued above.
        return DeviceTokens(self.sampler.sample(logits, rows), seq_ids)

    @staticmethod
    def collect(launched: DeviceTokens) -> SamplerOutput:
        """The launched step's sampled tokens on the host, one per sampling row (waits for the step)."""
        return launched.outputs()
