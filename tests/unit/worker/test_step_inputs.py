"""A step's inputs are read off its sequences in one pass, exactly as the per-row path read them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan
from services.worker.attention_metadata import step_metadata
from services.worker.decode_inputs import DecodeInputs
from services.worker.sampling.batch import SamplingBatch
from services.worker.sampling.types import SamplingRow
from services.worker.sequences import PENDING_TOKEN, SequenceLimits, SequenceTable
from services.worker.step_inputs import StepInputs

BLOCK = 4
LIMITS = SequenceLimits(block_size=BLOCK, num_kv_blocks=64, max_model_len=64, vocab_size=100)
GREEDY, HOT = SamplingParams(max_tokens=8), SamplingParams(max_tokens=8, temperature=1.0)


def _mixed_step() -> tuple[SequenceTable, list]:
    """Seqs 1 and 2 decode (2 with its input token still pending on the device), 3 prefills its last chunk and
    4 a middle chunk that samples nothing."""
    table = SequenceTable(LIMITS)
    table.apply(StepPlan(1, [
        NewSeq(1, [11, 12, 13, 14, 15], 5, GREEDY, [0, 1], 4, 1),
        NewSeq(2, [21, 22, 23], 3, HOT, [2], 2, 1),
    ]))
    for seq in list(table.seqs.values()):
        seq.num_computed_tokens = len(seq.token_ids)
    table.seqs[1].token_ids.append(16)
    table.seqs[2].token_ids.append(PENDING_TOKEN)  # launched: its token is on the device
    scheduled, errors = table.apply(StepPlan(2, [
        NewSeq(3, [31, 32, 33, 34, 35, 36], 6, GREEDY, [3, 4], 3, 3),
        NewSeq(4, [41, 42, 43, 44, 45, 46, 47], 7, GREEDY, [5, 6], 0, 4),
    ], CachedSeqs.of([(1, [], 1), (2, [7], 1)])))
    assert errors == []
    return table, scheduled


def test_a_mixed_step_reads_every_column_of_its_rows_in_row_order() -> None:
    table, scheduled = _mixed_step()
    inputs = StepInputs.of(scheduled)
    assert [seq.state.seq_id for seq in scheduled] == [1, 2, 3, 4]  # one-token rows first
    assert inputs.token_ids == [16, 0, 34, 35, 36, 41, 42, 43, 44]
    assert inputs.starts == [5, 3, 3, 0]
    assert inputs.num_tokens == [1, 1, 3, 4]
    assert inputs.block_tables == [[0, 1], [2, 7], [3, 4], [5, 6]]
    assert inputs.block_tables[0] is table.seqs[1].block_ids  # the sequence's own list, not a copy
    assert (inputs.sample_rows, inputs.sample_seq_ids) == ([0, 1, 2], [1, 2, 3])
    assert inputs.sampling_rows == [table.seqs[i].sampling_row for i in (1, 2, 3)]
    assert (inputs.pending_positions, inputs.pending_seq_ids) == ([1], [2])
    assert (inputs.one_token, inputs.plain_greedy, inputs.guided_pending) == (False, False, False)


def test_the_pending_rows_are_those_the_step_before_sampled_for_their_sequences() -> None:
    _, scheduled = _mixed_step()
    inputs = StepInputs.of(scheduled)
    with pytest.raises(ValueError, match="^seq 2: its input token is pending but no step precedes it$"):
        inputs.pending_rows(None)


def test_the_decode_staging_array_holds_what_the_attention_metadata_of_the_same_rows_holds() -> None:
    table, scheduled = _mixed_step()
    decode = [seq for seq in scheduled if seq.num_tokens == 1]
    inputs = StepInputs.of(decode)
    assert inputs.one_token
    staging = DecodeInputs(np.zeros(DecodeInputs.size(4, 8), dtype=np.int32), 4, 8, BLOCK)
    longest = staging.fill(inputs.token_ids, inputs.starts, inputs.block_tables, 4).longest
    meta, _ = step_metadata(inputs.starts, inputs.num_tokens, inputs.block_tables, BLOCK, torch.device("cpu"),
                            max_blocks=8)
    assert longest == 6
    assert staging.token_ids[:2].tolist() == [16, 0]
    assert staging.positions[:2].tolist() == meta.positions.tolist() == [5, 3]
    assert staging.slots[:2].tolist() == meta.slot_mapping.tolist() == [1 * BLOCK + 1, 2 * BLOCK + 3]
    assert staging.context_lens[:4].tolist() == [6, 4, 1, 1]  # padding rows attend to one entry
    assert staging.slots[2:4].tolist() == [-1, -1]  # and write nowhere
    assert staging.tables[:2, :2].tolist() == meta.block_tables[:, :2].tolist() == [[0, 1], [2, 7]]


def test_a_decoding_sequence_keeps_one_step_part_and_drops_it_with_the_sequence() -> None:
    table = SequenceTable(LIMITS)
    table.apply(StepPlan(1, [NewSeq(1, [1, 2, 3], 3, GREEDY, [0], 3, 0)]))
    table.seqs[1].token_ids.append(4)
    first, _ = table.apply(StepPlan(2, [], CachedSeqs.of([(1, [], 1)])))
    table.advance(first[0], 5)
    second, _ = table.apply(StepPlan(3, [], CachedSeqs.of([(1, [1], 1)])))
    assert second[0] is first[0] and (first[0].num_tokens, first[0].samples) == (1, True)
    state = table.seqs[1]
    table.apply(StepPlan(4, finished_seq_ids=[1]))
    assert 1 not in table.seqs and state.decode_part is None



def test_each_cached_row_takes_its_own_new_blocks_even_after_a_row_that_fails() -> None:
    table = SequenceTable(LIMITS)
    table.apply(StepPlan(1, [NewSeq(seq_id, [1, 2, 3, 4], 4, GREEDY, [seq_id - 1], 4, 0) for seq_id in (1, 2)]))
    for seq_id in (1, 2):
        table.seqs[seq_id].token_ids.append(5)
    scheduled, errors = table.apply(StepPlan(2, [], CachedSeqs.of([(77, [9], 1), (1, [6], 1), (2, [7, 8], 1)])))
    assert [(e.seq_id, e.error.message) for e in errors] == [
        (77, "seq 77: unknown sequence (never sent as NewSeq, finished or failed)")]
    assert [seq.state.seq_id for seq in scheduled] == [1, 2]
    assert (table.seqs[1].block_ids, table.seqs[2].block_ids) == ([0, 6], [1, 7, 8])


PARAMS = {
    "temperature": [0.0, 0.7, 1.0],
    "top_k": [0, 1, 5],
    "top_p": [1.0, 0.9],
    "min_p": [0.0, 0.1],
    "repetition_penalty": [1.0, 1.3],
    "logprobs": [None, 2],
    "min_tokens": [0, 3],
    "seed": [None, 7],
    "logit_bias": [(), ((3, 1.5),)],
}


def _fields(batch: SamplingBatch) -> list:
    out = []
    for name in SamplingBatch.__slots__:
        value = getattr(batch, name)
        if hasattr(value, "__slots__") and not isinstance(value, torch.Tensor):
            value = _fields_of(value)
        out.append((name, value.tolist() if isinstance(value, torch.Tensor) else value))
    return out


def _fields_of(obj: object) -> list:
    return [(n, v.tolist() if isinstance(v, torch.Tensor) else v) for n, v in
            ((n, getattr(obj, n)) for n in obj.__slots__)]


def test_rows_whose_temperature_alone_counts_build_the_batch_the_full_walk_builds() -> None:
    rows = []
    for values in itertools.product(*PARAMS.values()):
        params = SamplingParams(max_tokens=8, **dict(zip(PARAMS, values)))
        rows.append(SamplingRow(params, [1, 2], [4] * (len(rows) % 5)))
    assert len(rows) == 1152
    plain = [i for i, row in enumerate(rows) if row.plain]
    assert [rows[i].params.temperature for i in plain] == [0.0, 0.7, 1.0]  # every other field at its default
    walked = []
    for row in rows:
        copy = SamplingRow(row.params, row.prompt_token_ids, row.output_token_ids)
        copy.plain = False  # the full walk over every feature
        walked.append(copy)
    for picked in (list(range(len(rows))), plain, [0, *range(500, 700), *plain]):
        fast = SamplingBatch.build([rows[i] for i in picked], 100, (2,), torch.device("cpu"))
        full = SamplingBatch.build([walked[i] for i in picked], 100, (2,), torch.device("cpu"))
        assert _fields(fast) == _fields(full)
