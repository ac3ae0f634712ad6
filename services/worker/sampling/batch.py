"""Per-step sampling metadata, built once on the host from the rows and copied to the device.

Row subsets are int64 index tensors over the batch's rows; a subset holding every row is None, so the tensor
code skips the gather and the write-back. A feature no row uses leaves its field None (its count says so where
None would be ambiguous) and costs nothing: no transfer, no kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from services.worker.grammar import bitmask_words, fill_bitmask
from services.worker.sampling.noise import draw_keys
from services.worker.sampling.types import SamplingRow


@dataclass(frozen=True, slots=True)
class PenaltyBatch:
    """Rows with a repetition, presence or frequency penalty, and the tokens they have seen."""

    rows: torch.Tensor | None  # [P] int64 batch rows; None: every row
    repetition: torch.Tensor | None  # [P, 1] fp32; None: no row has a repetition penalty
    presence: torch.Tensor  # [P, 1] fp32
    frequency: torch.Tensor  # [P, 1] fp32
    output_flat: torch.Tensor  # [num_output_tokens] int64: local row * vocab_size + token id
    prompt_flat: torch.Tensor | None  # [num_prompt_tokens] int64, same layout; only with a repetition penalty


@dataclass(frozen=True, slots=True)
class TruncationBatch:
    """Sampled rows with top-k, top-p or min-p."""

    rows: torch.Tensor | None  # [R] int64 batch rows; None: every row
    top_k: torch.Tensor | None  # [R, 1] int64, 0 where off; None: no row uses top-k
    max_top_k: int  # largest top_k among the rows
    top_p: torch.Tensor | None  # [R, 1] fp32, 1 where off; None: no row uses top-p
    min_p: torch.Tensor | None  # [R, 1] fp32, 0 where off; None: no row uses min-p


@dataclass(frozen=True, slots=True)
class GrammarBatch:
    """Rows whose output follows a grammar, and the tokens each may take next."""

    rows: torch.Tensor | None  # [G] int64 batch rows; None: every row
    # [num_rows, ceil(vocab_size / 32)] int32, bit set = token allowed (xgrammar's layout); only `rows` are set
    bitmask: torch.Tensor


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Everything the tensor code of one sampler call needs."""

    num_rows: int
    vocab_size: int
    bias_flat: torch.Tensor | None  # [num_biased] int64 row * vocab_size + token id, for logit_bias
    bias_values: torch.Tensor | None  # [num_biased] fp32 added at bias_flat
    penalties: PenaltyBatch | None
    grammar: GrammarBatch | None
    banned_flat: torch.Tensor | None  # [num_banned] int64 row * vocab_size + token id, for tokens min_tokens masks
    temperature: torch.Tensor | None  # [num_rows, 1] fp32, 1 on greedy rows; None: every row has 1
    num_greedy: int
    sample_rows: torch.Tensor | None  # [S] int64 non-greedy rows; None: every row, or none if num_greedy == num_rows
    truncation: TruncationBatch | None
    seeded_local: torch.Tensor | None  # [num_seeded] int64 positions within sample_rows of seeded rows
    seeded_keys: torch.Tensor | None  # [num_seeded, 2] int64 draw keys
    num_unseeded: int  # sampled rows without a seed
    logprob_rows: torch.Tensor | None  # [L] int64 rows asking for logprobs; None: every row, or none if L == 0
    logprob_row_ids: tuple[int, ...]  # the same rows, on the host
    logprob_counts: tuple[int, ...]  # per logprob row, how many alternatives it asked for (capped at vocab)

    @property
    def is_plain_greedy(self) -> bool:
        """Whether one argmax over the raw logits answers the whole batch."""
        return (
            self.num_greedy == self.num_rows
            and self.penalties is None
            and self.bias_flat is None
            and self.grammar is None
            and self.banned_flat is None
            and not self.logprob_row_ids
        )

    @property
    def num_sampled(self) -> int:
        return self.num_rows - self.num_greedy

    @classmethod
    def build(
        cls, rows: Sequence[SamplingRow], vocab_size: int, eos_token_ids: Sequence[int], device: torch.device
    ) -> SamplingBatch:
        num_rows = len(rows)
        pen_rows: list[int] = []
        pen_params: list[tuple[float, float, float]] = []  # (repetition, presence, frequency)
        banned_flat: list[int] = []
        bias_flat: list[int] = []
        bias_values: list[float] = []
        temperatures: list[float] = []
        sample_rows: list[int] = []
        trunc_rows: list[int] = []
        trunc_params: list[tuple[int, float, float]] = []  # (top_k, top_p, min_p)
        seeded_local: list[int] = []
        seeds: list[int] = []  # per seeded row, its seed and draw position (tokens generated so far)
        positions: list[int] = []
        logprob_rows: list[int] = []
        logprob_counts: list[int] = []
        grammar_rows: list[int] = []
        for i, row in enumerate(rows):
            p = row.params
            if row.plain:  # the common row, decided at its construction: only its temperature counts
                if row.greedy:
                    temperatures.append(1.0)
                else:
                    temperatures.append(p.temperature)
                    sample_rows.append(i)
                continue
            if not row.simple:  # a simple row (guided or seeded, nothing else) has none of these four features
                for token_id, bias in p.logit_bias:
                    if token_id >= vocab_size:
                        raise ValueError(f"logit_bias names token {token_id}, outside [0, {vocab_size})")
                    bias_flat.append(i * vocab_size + token_id)
                    bias_values.append(bias)
                if row.penalised:
                    pen_rows.append(i)
                    pen_params.append((p.repetition_penalty, p.presence_penalty, p.frequency_penalty))
                if len(row.output_token_ids) < p.min_tokens:
                    banned = {t for t in p.stop_token_ids if t < vocab_size}
                    if not p.ignore_eos:
                        banned.update(eos_token_ids)
                    banned_flat.extend(i * vocab_size + t for t in sorted(banned))
                if p.logprobs is not None:
                    logprob_rows.append(i)
                    logprob_counts.append(min(p.logprobs, vocab_size))
            if row.grammar is not None and not row.grammar.ended:  # an ended grammar leaves its row unmasked
                grammar_rows.append(i)
            if row.greedy:
                temperatures.append(1.0)
                continue
            temperatures.append(p.temperature)
            if p.seed is not None:
                seeded_local.append(len(sample_rows))
                seeds.append(p.seed)
                positions.append(len(row.output_token_ids))
            sample_rows.append(i)
            if row.simple:  # nor truncation
                continue
            top_k = p.top_k if p.top_k < vocab_size else 0
            if top_k or p.top_p < 1.0 or p.min_p > 0.0:
                trunc_rows.append(i)
                trunc_params.append((top_k, p.top_p, p.min_p))

        to_dev = _Mover(device)
        return cls(
            num_rows=num_rows,
            vocab_size=vocab_size,
            bias_flat=to_dev.ints(bias_flat) if bias_flat else None,
            bias_values=to_dev.move(torch.tensor(bias_values, dtype=torch.float32)) if bias_values else None,
            penalties=_penalty_batch(rows, pen_rows, pen_params, num_rows, vocab_size, to_dev) if pen_rows else None,
            grammar=_grammar_batch(rows, grammar_rows, vocab_size, to_dev) if grammar_rows else None,
            banned_flat=to_dev.ints(banned_flat) if banned_flat else None,
            temperature=to_dev.column(temperatures) if temperatures.count(1.0) != num_rows else None,
            num_greedy=num_rows - len(sample_rows),
            sample_rows=to_dev.subset(sample_rows, num_rows) if sample_rows else None,
            truncation=_truncation_batch(trunc_rows, trunc_params, num_rows, to_dev) if trunc_rows else None,
            seeded_local=to_dev.ints(seeded_local) if seeded_local else None,
            seeded_keys=to_dev.move(torch.from_numpy(draw_keys(seeds, positions))) if seeds else None,
            num_unseeded=len(sample_rows) - len(seeded_local),
            logprob_rows=to_dev.subset(logprob_rows, num_rows) if logprob_rows else None,
            logprob_row_ids=tuple(logprob_rows),
            logprob_counts=tuple(logprob_counts),
        )


class _Mover:
    """Host lists to device tensors; on CUDA through pinned memory so the copies never wait for the GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def move(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)  # pin_memory() of a pinned tensor is itself

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host tensor to fill and then `move`: pinned for a CUDA device, so the move copies it only once."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def ints(self, values: list) -> torch.Tensor:
        return self.move(torch.tensor(values, dtype=torch.int64))

    def column(self, values: list[float]) -> torch.Tensor:
        return self.move(torch.tensor(values, dtype=torch.float32).unsqueeze(1))

    def subset(self, rows: list[int], num_rows: int) -> torch.Tensor | None:
        # Rows are collected in increasing order, so a full-length list is every row.
        return None if len(rows) == num_rows else self.ints(rows)


def _flat_tokens(seqs: list[Sequence[int]], vocab_size: int, what: str) -> torch.Tensor:
    """Token ids of several rows as [num_tokens] int64 `local row * vocab_size + token id`, on the host."""
    if all(isinstance(s, (list, tuple)) for s in seqs):
        # Lists of Python ints, the common case: one pass in C instead of a tensor per list.
        lengths = [len(s) for s in seqs]
        tokens = torch.from_numpy(np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=sum(lengths)))
    else:
        parts = [torch.as_tensor(s, dtype=torch.int64, device="cpu").reshape(-1) for s in seqs]
        lengths = [p.numel() for p in parts]
        tokens = torch.cat(parts)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{what} hold ids outside [0, {vocab_size}): min {int(tokens.min())}, max {int(tokens.max())}")
    local = torch.repeat_interleave(torch.arange(len(seqs), dtype=torch.int64), torch.tensor(lengths))
    return local * vocab_size + tokens


def _penalty_batch(
    rows: Sequence[SamplingRow],
    pen_rows: list[int],
    params: list[tuple[float, float, float]],
    num_rows: int,
    vocab_size: int,
    to_dev: _Mover,
) -> PenaltyBatch:
    repetition, presence, frequency = (list(v) for v in zip(*params))
    uses_repetition = any(r != 1.0 for r in repetition)
    output_flat = _flat_tokens([rows[i].output_token_ids for i in pen_rows], vocab_size, "output_token_ids")
    prompt_flat = None
    if uses_repetition:
        prompt_flat = to_dev.move(
            _flat_tokens([rows[i].prompt_token_ids for i in pen_rows], vocab_size, "prompt_token_ids")
        )
    return PenaltyBatch(
        rows=to_dev.subset(pen_rows, num_rows),
        repetition=to_dev.column(repetition) if uses_repetition else None,
        presence=to_dev.column(presence),
        frequency=to_dev.column(frequency),
        output_flat=to_dev.move(output_flat),
        prompt_flat=prompt_flat,
    )


def _grammar_batch(
    rows: Sequence[SamplingRow], grammar_rows: list[int], vocab_size: int, to_dev: _Mover
) -> GrammarBatch:
    """Fills the guided rows' masks in one host tensor (pinned with a CUDA device, where this overlaps the forward
    pass the host has only queued so far) and copies it over once."""
    host = to_dev.empty((len(grammar_rows), bitmask_words(vocab_size)), torch.int32)  # [G, words]
    fill_bitmask([rows[i].grammar for i in grammar_rows], host)
    bitmask = to_dev.move(host)
    subset = to_dev.subset(grammar_rows, len(rows))
    if subset is not None:
        # The masking kernel reads row i's mask at row i: the G masks go to their rows of a [num_rows, words]
        # tensor on the device, whose other rows are never read.
        bitmask = bitmask.new_empty((len(rows), bitmask.shape[1])).index_copy_(0, subset, bitmask)
    return GrammarBatch(subset, bitmask)


def _truncation_batch(
    trunc_rows: list[int], params: list[tuple[int, float, float]], num_rows: int, to_dev: _Mover
) -> TruncationBatch:
    top_k, top_p, min_p = (list(v) for v in zip(*params))
    max_top_k = max(top_k)
    return TruncationBatch(
        rows=to_dev.subset(trunc_rows, num_rows),
        top_k=to_dev.move(torch.tensor(top_k, dtype=torch.int64).unsqueeze(1)) if max_top_k else None,
        max_top_k=max_top_k,
        top_p=to_dev.column(top_p) if any(p < 1.0 for p in top_p) else None,
        min_p=to_dev.column(min_p) if any(p > 0.0 for p in min_p) else None,
    )
