"""The sampler's logit transforms, each in place on fp32 logits [num_rows, vocab_size], batched over the rows
that use the feature (see `SamplingBatch`)."""

from __future__ import annotations

import torch

from services.worker.sampling.batch import GrammarBatch, PenaltyBatch, SamplingBatch, TruncationBatch


def _gather(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x.index_select(0, rows)


def _write_back(x: torch.Tensor, rows: torch.Tensor | None, sub: torch.Tensor) -> None:
    if rows is not None:
        x.index_copy_(0, rows, sub)
    elif sub is not x:
        x.copy_(sub)


def apply_penalties(x: torch.Tensor, pen: PenaltyBatch) -> None:
    """Repetition penalty (prompt and output tokens: positive logits divided by it, negative multiplied), then
    frequency (times each output occurrence) and presence (once per distinct output token) subtracted."""
    sub = _gather(x, pen.rows)  # [P, vocab_size]
    counts = torch.zeros_like(sub)  # [P, vocab_size] occurrences in the output
    ones = torch.ones(pen.output_flat.shape, dtype=sub.dtype, device=sub.device)
    counts.view(-1).index_add_(0, pen.output_flat, ones)
    generated = counts > 0
    if pen.repetition is not None:
        seen = generated.clone()
        if pen.prompt_flat is not None:
            seen.view(-1).index_fill_(0, pen.prompt_flat, True)
        penalised = torch.where(sub > 0, sub / pen.repetition, sub * pen.repetition)
        sub = torch.where(seen, penalised, sub)
    sub = sub - pen.frequency * counts - pen.presence * generated
    _write_back(x, pen.rows, sub)


def ban_tokens(x: torch.Tensor, batch: SamplingBatch) -> None:
    """-inf on the EOS and stop ids of rows still short of min_tokens."""
    if batch.banned_flat is not None:
        x.view(-1).index_fill_(0, batch.banned_flat, float("-inf"))


def apply_grammar(x: torch.Tensor, grammar: GrammarBatch) -> None:
    """-inf on every token the row's grammar does not allow next, in place on the guided rows only."""
    import xgrammar

    # xgrammar's CUDA backend compiles on first use; its Triton kernel needs nothing beyond Triton.
    backend = "cpu" if x.device.type == "cpu" else "triton"
    xgrammar.apply_token_bitmask_inplace(
        x, grammar.bitmask, vocab_size=x.shape[1], indices=grammar.rows, backend=backend
    )


def adjust(x: torch.Tensor, batch: SamplingBatch) -> None:
    """logit_bias, penalties, min_tokens masking, then the grammars' masks: what greedy rows take the argmax of."""
    if batch.bias_flat is not None:
        x.view(-1).index_add_(0, batch.bias_flat, batch.bias_values)
    if batch.penalties is not None:
        apply_penalties(x, batch.penalties)
    ban_tokens(x, batch)
    if batch.grammar is not None:
        apply_grammar(x, batch.grammar)


def _kth_largest(values: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """[R, 1]: each row's k-th value from values sorted descending along dim 1; -inf where k is 0 (off)."""
    kth = values.gather(1, (top_k - 1).clamp_min(0))
    return kth.masked_fill(top_k == 0, float("-inf"))


def truncate(x: torch.Tensor, trunc: TruncationBatch) -> None:
    """top-k, then top-p over the renormalised survivors, then min-p; dropped tokens get -inf.

    top-k keeps every token at least as large as the k-th largest logit (ties with it survive). top-p keeps
    the smallest set of best tokens whose probability reaches top_p (the best token always survives). min-p
    keeps tokens whose probability is at least min_p times the best one's, i.e. logit >= max + log(min_p).
    """
    sub = _gather(x, trunc.rows)  # [R, vocab_size]
    if trunc.top_p is not None:
        # One sort serves top-k and top-p; results return to vocabulary order by scattering through `order`.
        ranked, order = sub.sort(dim=-1, descending=True)  # [R, vocab_size] each
        if trunc.top_k is not None:
            ranked.masked_fill_(ranked < _kth_largest(ranked, trunc.top_k), float("-inf"))
        probs = ranked.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly better-ranked tokens
        # Rows without top-p (p = 1) are spared explicitly: rounding can bring their mass_before to 1.
        drop = (mass_before >= trunc.top_p) & (trunc.top_p < 1.0)
        drop[:, 0] = False
        ranked.masked_fill_(drop, float("-inf"))
        sub = torch.empty_like(sub).scatter_(1, order, ranked)
    elif trunc.top_k is not None:
        best = sub.topk(trunc.max_top_k, dim=-1).values  # [R, max_top_k], descending
        sub.masked_fill_(sub < _kth_largest(best, trunc.top_k), float("-inf"))
    if trunc.min_p is not None:
        threshold = sub.amax(dim=-1, keepdim=True) + trunc.min_p.log()  # log(0) = -inf keeps every token
        sub.masked_fill_(sub < threshold, float("-inf"))
    _write_back(x, trunc.rows, sub)
