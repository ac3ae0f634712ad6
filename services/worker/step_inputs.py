"""A step's model inputs, read off its sequences in one pass: the tokens to run, where each row starts, its block
table, which rows sample, and which input tokens the step queued before this one sampled (still on the device).

Every later use reads these columns (the decode graph's staging array, the attention metadata, the sampler's rows,
the rows of the sampled tokens) instead of walking the sequences again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.worker.device_tokens import DeviceTokens
from services.worker.executors import plain_greedy
from services.worker.sampler import SamplingRow
from services.worker.sequences import PENDING_TOKEN, StepSeq


@dataclass(slots=True)
class StepInputs:
    token_ids: list[int]  # every row's tokens, concatenated; a pending token reads 0 (see pending_positions)
    starts: list[int]  # per row: position of its first token (its computed tokens)
    num_tokens: list[int]  # per row: tokens it runs
    block_tables: list[Sequence[int]]  # per row: its block table (the sequence's own list)
    sample_rows: list[int]  # rows that sample, in order
    sample_seq_ids: list[int]  # their sequences
    sampling_rows: list[SamplingRow]  # their sampler rows
    pending_positions: list[int]  # indices in token_ids whose token the step before sampled
    pending_seq_ids: list[int]  # the sequences those tokens were sampled for, in the same order
    guided_pending: bool  # a pending token belongs to a guided row (its matcher lacks it still)
    one_token: bool  # every row runs one token (a decode step)
    plain_greedy: bool  # every row's token is the argmax of its raw logits (see executors.plain_greedy)

    @classmethod
    def of(cls, scheduled: Sequence[StepSeq]) -> StepInputs:
        token_ids: list[int] = []
        starts: list[int] = []
        num_tokens: list[int] = []
        tables: list[Sequence[int]] = []
        sample_rows: list[int] = []
        seq_ids: list[int] = []
        sampling_rows: list[SamplingRow] = []
        pending_positions: list[int] = []
        pending_seq_ids: list[int] = []
        guided_pending = False
        one_token = True
        greedy = True
        for i, seq in enumerate(scheduled):
            state = seq.state
            n = seq.num_tokens
            start = state.num_computed_tokens
            tokens = state.token_ids
            last = tokens[start + n - 1]
            if n == 1:
                token_ids.append(last)
            else:
                one_token = False
                token_ids.extend(tokens[start : start + n])
            if last == PENDING_TOKEN:
                token_ids[-1] = 0
                pending_positions.append(len(token_ids) - 1)
                pending_seq_ids.append(state.seq_id)
                guided_pending = guided_pending or state.grammar is not None
            starts.append(start)
            num_tokens.append(n)
            tables.append(state.block_ids)
            if greedy and not plain_greedy(state):
                greedy = False
            if seq.samples:
                sample_rows.append(i)
                seq_ids.append(state.seq_id)
                sampling_rows.append(state.sampling_row)
        return cls(token_ids, starts, num_tokens, tables, sample_rows, seq_ids, sampling_rows, pending_positions,
                   pending_seq_ids, guided_pending, one_token, greedy)

    @property
    def num_rows(self) -> int:
        return len(self.starts)

    def pending_rows(self, prev: DeviceTokens | None) -> list[int]:
        """The rows of `prev`'s tokens that the pending positions take, in their order."""
        if not self.pending_positions:
            return []
        if prev is None:
            raise ValueError(f"seq {self.pending_seq_ids[0]}: its input token is pending but no step precedes it")
        return prev.rows_of(self.pending_seq_ids)
