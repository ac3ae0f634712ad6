"""What the sampler takes per row and gives back per row (plain data, no tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.sampling import SamplingParams
from services.common.step import TokenLogprobs


@dataclass(slots=True)
class SamplingRow:
    """One row of the logits: its request's parameters and the tokens it has seen.

    Token sequences may be lists, tuples, numpy arrays or CPU tensors of ints; they are read only for the
    penalties and min_tokens, and their length is the draw position of a seeded row. A sequence's row is made once
    and lives as long as it does (its token views follow its tokens), so what the parameters decide is decided
    here, once: `penalised`, `plain` and `simple` (parameters and grammar are fixed at construction).
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int]  # for the repetition penalty
    output_token_ids: Sequence[int]  # tokens generated so far (penalties, min_tokens, seeded position)
    grammar: Any = None  # the sequence's grammar.GrammarState when its output is guided: masks the logits
    penalised: bool = field(init=False)  # a repetition, presence or frequency penalty reads the seen tokens
    # Only the temperature shapes its token: no bias, penalty, min_tokens, grammar, logprobs, truncation or seed.
    plain: bool = field(init=False)
    # Only the temperature, a seed and a grammar shape its token (a plain row is simple too).
    simple: bool = field(init=False)
    greedy: bool = field(init=False)  # params.is_greedy

    def __post_init__(self) -> None:
        p = self.params
        self.penalised = p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        self.greedy = p.is_greedy
        self.simple = (
            not self.penalised and not p.logit_bias and p.min_tokens == 0 and p.logprobs is None and p.top_k == 0
            and p.top_p == 1.0 and p.min_p == 0.0
        )
        self.plain = self.simple and self.grammar is None and p.seed is None


@dataclass(slots=True)
class SamplerOutput:
    """One sampled token per row, in row order."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None where the row did not ask for logprobs
