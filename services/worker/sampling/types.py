"""What the sampler takes per row and gives back per row (plain data, no tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.sampling import SamplingParams
from services.common.step import TokenLogprobs


@dataclass(slots=True)
class SamplingRow:
    """One row of the logits: its request's parameters and the tokens it has seen.

    Token sequences may be lists, tuples, numpy arrays or CPU tensors of ints; they are read only for the
    penalties and min_tokens, and their length is the draw position of a seeded row.
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int]  # for the repetition penalty
    output_token_ids: Sequence[int]  # tokens generated so far (penalties, min_tokens, seeded position)
    grammar: Any = None  # the sequence's grammar.GrammarState when its output is guided: masks the logits


@dataclass(slots=True)
class SamplerOutput:
    """One sampled token per row, in row order."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None where the row did not ask for logprobs
