"""A step's sampled tokens while still on the device, and the one copy that brings them to the host."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.worker.sampling.types import SamplerOutput, TokenLogprobs


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """Sampled tokens on the logits' device. `token_ids` can feed the next forward pass before the host reads
    anything; `to_host()` makes the single device-to-host copy (and so waits for the step to finish)."""

    token_ids: torch.Tensor  # [num_rows] int64
    packed: torch.Tensor  # token_ids alone, or float64 [num_rows + L + 2 * L * max_n] (see `pack`)
    logprob_row_ids: tuple[int, ...]  # rows with logprobs, in order (L of them)
    logprob_counts: tuple[int, ...]  # alternatives each of them asked for

    @classmethod
    def pack(
        cls,
        token_ids: torch.Tensor,
        logprobs: torch.Tensor | None,
        logprob_rows: torch.Tensor | None,
        logprob_row_ids: tuple[int, ...],
        logprob_counts: tuple[int, ...],
    ) -> DeviceSample:
        """token_ids [num_rows]; logprobs [L, vocab_size] of the rows `logprob_rows` (None: every row).

        With logprobs, everything goes into one float64 tensor (exact for token ids and fp32 values): the ids,
        the chosen tokens' logprobs [L], the best alternatives' ids [L, max_n] and their logprobs [L, max_n].
        """
        if logprobs is None:
            return cls(token_ids, token_ids, (), ())
        chosen_ids = token_ids if logprob_rows is None else token_ids.index_select(0, logprob_rows)  # [L]
        parts = [token_ids.to(torch.float64), logprobs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1).double()]
        max_n = max(logprob_counts)
        if max_n:
            best = logprobs.topk(max_n, dim=-1)  # [L, max_n] each, best first
            parts += [best.indices.double().flatten(), best.values.double().flatten()]
        return cls(token_ids, torch.cat(parts), logprob_row_ids, logprob_counts)

    def to_host(self) -> SamplerOutput:
        return self.unpack(self.packed.tolist())

    def unpack(self, host: list[float] | list[int]) -> SamplerOutput:
        """The SamplerOutput of `packed` as read on the host (its `tolist()`, or that of a host copy of it)."""
        num_rows, num_lp = self.token_ids.shape[0], len(self.logprob_row_ids)
        # Read as floats when packed with logprobs (exact for token ids), as ints otherwise.
        ids = [int(t) for t in host[:num_rows]] if num_lp else host[:num_rows]
        out: list[TokenLogprobs | None] = [None] * num_rows
        max_n = max(self.logprob_counts, default=0)
        top_ids = host[num_rows + num_lp : num_rows + num_lp * (1 + max_n)]
        top_values = host[num_rows + num_lp * (1 + max_n) :]
        for j, (row, n) in enumerate(zip(self.logprob_row_ids, self.logprob_counts)):
            top = [(int(top_ids[j * max_n + i]), top_values[j * max_n + i]) for i in range(n)]
            out[row] = TokenLogprobs(token_id=ids[row], logprob=host[num_rows + j], top=top)
        return SamplerOutput(token_ids=ids, logprobs=out)
