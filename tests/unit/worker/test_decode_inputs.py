"""Decode graph inputs: one staging array equal to the step's attention metadata, block tables written by tail
and sent as the columns the step reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.cuda_graphs import batch_buckets, context_buckets
from services.worker.decode_inputs import DecodeInputs, Staged

BLOCK = 4
MAX_SEQS, MAX_BLOCKS = 8, 6


def _inputs(loop_rows: int = 0) -> DecodeInputs:
    return DecodeInputs(np.zeros(DecodeInputs.size(MAX_SEQS, MAX_BLOCKS), dtype=np.int32), MAX_SEQS, MAX_BLOCKS, BLOCK,
                        loop_rows)


# Every step written row by row (a loop), and by numpy over all rows.
BOTH_WAYS = pytest.mark.parametrize("loop_rows", [MAX_SEQS + 1, 0], ids=["row by row", "all rows at once"])


def _fill(inputs: DecodeInputs, token_ids: list[int], chunks: list[SeqChunk], bucket: int) -> Staged:
    return inputs.fill(token_ids, [c.start for c in chunks], [c.block_ids for c in chunks], bucket)


def _assert_matches_metadata(inputs: DecodeInputs, staged: Staged, token_ids: list[int], chunks: list[SeqChunk],
                             bucket: int) -> None:
    meta = build_attention_metadata(chunks, BLOCK, torch.device("cpu"), max_blocks=MAX_BLOCKS)
    n = len(chunks)
    assert inputs.token_ids[:n].tolist() == token_ids
    assert inputs.positions[:n].tolist() == meta.positions.tolist()
    assert inputs.slots[:n].tolist() == meta.slot_mapping.tolist()
    assert inputs.context_lens[:n].tolist() == meta.context_lens.tolist()
    columns = -(-int(meta.context_lens.max()) // BLOCK)
    packed = inputs.packed[: bucket * columns].reshape(bucket, columns)  # what the device gets
    assert (staged.longest, staged.columns) == (int(meta.context_lens.max()), columns)
    assert staged.used == 4 * MAX_SEQS + bucket * columns
    for i, chunk in enumerate(chunks):
        width = len(chunk.block_ids)
        assert inputs.tables[i, :width].tolist() == meta.block_tables[i, :width].tolist()
        read = -(-int(meta.context_lens[i]) // BLOCK)  # the columns row i's context reads
        assert packed[i, :read].tolist() == meta.block_tables[i, :read].tolist()
    assert inputs.slots[n:bucket].tolist() == [-1] * (bucket - n)  # padding writes nowhere
    assert inputs.context_lens[n:bucket].tolist() == [1] * (bucket - n)


@BOTH_WAYS
def test_staging_holds_the_same_positions_slots_and_tables_as_the_attention_metadata_over_many_steps(
    loop_rows: int,
) -> None:
    inputs = _inputs(loop_rows)
    tables = {1: [7, 2], 2: [5], 3: [9, 11, 0]}
    starts = {1: 6, 2: 1, 3: 9}
    for step in range(12):
        order = [1, 2, 3] if step % 3 else [3, 1, 2]  # rows change owners between steps
        if step == 7:
            tables[2] = [13, 14]  # a resent sequence gets a new list: its row is rewritten whole
            starts[2] = 5
        chunks = []
        for seq in order:
            if starts[seq] // BLOCK >= len(tables[seq]):
                tables[seq].append(20 + 3 * step + seq)  # the list grows in place, as the sequence table does
            chunks.append(SeqChunk(starts[seq], 1, tables[seq]))
        token_ids = [100 * step + seq for seq in order]
        staged = _fill(inputs, token_ids, chunks, 4)
        assert staged.longest == max(starts.values()) + 1
        _assert_matches_metadata(inputs, staged, token_ids, chunks, 4)
        for seq in order:
            starts[seq] += 1


@BOTH_WAYS
def test_a_smaller_batch_turns_the_rows_it_leaves_into_padding(loop_rows: int) -> None:
    inputs = _inputs(loop_rows)
    _fill(inputs, [1, 2, 3], [SeqChunk(0, 1, [1]), SeqChunk(2, 1, [2]), SeqChunk(3, 1, [3])], 4)
    staged = _fill(inputs, [4], [SeqChunk(5, 1, [1, 4])], 4)
    _assert_matches_metadata(inputs, staged, [4], [SeqChunk(5, 1, [1, 4])], 4)
    # The copy carries the 2 columns that position 5 reads in pages of 4, for all 4 rows of the bucket.
    assert staged == Staged(longest=6, columns=2, used=4 * MAX_SEQS + 4 * 2)
    assert inputs.packed[:8].tolist() == [1, 4, 2, 0, 3, 0, 0, 0]


def test_the_staging_array_carries_only_the_block_columns_the_longest_context_reads() -> None:
    inputs = _inputs()
    tables = [[1, 2, 3, 4, 5], [6, 7]]  # blocks held ahead of the contexts, as the scheduler allocates them
    assert _fill(inputs, [9, 8], [SeqChunk(6, 1, tables[0]), SeqChunk(2, 1, tables[1])], 2) == Staged(
        longest=7, columns=2, used=4 * MAX_SEQS + 2 * 2)
    assert inputs.packed[:4].tolist() == [1, 2, 6, 7]
    assert inputs.tables[0, :5].tolist() == [1, 2, 3, 4, 5]  # the host keeps every row's whole table
    assert _fill(inputs, [9, 8], [SeqChunk(16, 1, tables[0]), SeqChunk(3, 1, tables[1])], 2) == Staged(
        longest=17, columns=5, used=4 * MAX_SEQS + 2 * 5)
    assert inputs.packed[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 0, 0]


@BOTH_WAYS
def test_fill_rejects_batches_tables_and_positions_beyond_the_graphs(loop_rows: int) -> None:
    inputs = _inputs(loop_rows)
    with pytest.raises(ValueError, match="do not fit a bucket"):
        _fill(inputs, [1, 2], [SeqChunk(0, 1, [1]), SeqChunk(0, 1, [2])], 1)
    with pytest.raises(ValueError, match="exceeds the graphs' width"):
        _fill(inputs, [1], [SeqChunk(0, 1, list(range(MAX_BLOCKS + 1)))], 1)
    with pytest.raises(ValueError, match="^row 1: position 4 is past its block table of 1 blocks$"):
        _fill(inputs, [5, 6], [SeqChunk(3, 1, [0]), SeqChunk(4, 1, [1])], 2)
    with pytest.raises(ValueError, match="staging must be int32"):
        DecodeInputs(np.zeros(3, dtype=np.int64), MAX_SEQS, MAX_BLOCKS, BLOCK)


def test_rows_written_one_by_one_and_all_at_once_leave_the_same_staging_bytes_through_reshuffled_steps() -> None:
    rng = np.random.default_rng(0)
    by_row, at_once = _inputs(MAX_SEQS + 1), _inputs(0)
    tables = {seq: [int(b) for b in rng.integers(0, 50, 1)] for seq in range(12)}
    starts = {seq: int(rng.integers(0, BLOCK)) for seq in tables}
    for step in range(40):
        live = sorted(rng.choice(list(tables), size=int(rng.integers(1, MAX_SEQS + 1)), replace=False).tolist())
        if step % 9 == 4:
            seq = live[0]
            tables[seq] = [int(b) for b in rng.integers(0, 50, 1)]  # resent: a new list
            starts[seq] = int(rng.integers(0, BLOCK))
        chunks = []
        for seq in live:
            if starts[seq] // BLOCK >= len(tables[seq]):
                if len(tables[seq]) == MAX_BLOCKS:
                    tables[seq], starts[seq] = [int(rng.integers(0, 50))], 0
                else:
                    tables[seq].append(int(rng.integers(0, 50)))  # grows in place
            chunks.append(SeqChunk(starts[seq], 1, tables[seq]))
            starts[seq] += 1
        token_ids = [int(t) for t in rng.integers(0, 100, len(live))]
        staged = _fill(by_row, token_ids, chunks, MAX_SEQS)
        assert _fill(at_once, token_ids, chunks, MAX_SEQS) == staged
        assert by_row.host.tobytes() == at_once.host.tobytes()
        assert by_row.tables.tobytes() == at_once.tables.tobytes()
        _assert_matches_metadata(at_once, staged, token_ids, chunks, MAX_SEQS)


def test_short_contexts_get_a_graph_split_for_their_length_only_where_the_full_one_splits() -> None:
    # 8 kv heads: a single sequence splits a 4096-token context 32 ways and a 512-token one 4 ways (128 keys at
    # least per split); 64 sequences fill the chip unsplit.
    assert context_buckets(1, 8, 4096, 512) == [(512, 4), (4096, 32)]
    assert context_buckets(1, 8, 4096, 256) == [(256, 2), (4096, 32)]
    assert context_buckets(8, 8, 4096, 512) == [(512, 4), (4096, 8)]
    assert context_buckets(64, 8, 4096, 512) == [(4096, 1)]
    assert context_buckets(1, 8, 512, 512) == [(512, 4)]
    assert context_buckets(1, 8, 4096, 0) == [(4096, 32)]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert batch_buckets(1024)[33:39] == [248, 256, 288, 320, 352, 384]
    assert len(batch_buckets(1024)) == 3 + 32 + 24 and batch_buckets(1000)[-2:] == [992, 1000]


def test_leading_one_token_chunks_of_a_mixed_step_are_its_decode_part() -> None:
    chunks = [SeqChunk(9, 1, [0]), SeqChunk(20, 1, [1, 2]), SeqChunk(0, 5, [3]), SeqChunk(16, 1, [4, 5])]
    meta = build_attention_metadata(chunks, 16, torch.device("cpu"))
    assert (meta.num_decode_seqs, meta.decode_max_context_len) == (2, 21)
    assert meta.prefill_query_start_loc.tolist() == [0, 5, 6]
    assert meta.query_start_loc.tolist() == [0, 1, 2, 7, 8]
    # The prefill rows' own arrays, 16-byte aligned, not slices at an offset past the decode rows.
    assert meta.prefill_context_lens.tolist() == [5, 17] and meta.prefill_context_lens.data_ptr() % 16 == 0
    assert meta.prefill_block_tables.tolist() == [[3, 0], [4, 5]] and meta.prefill_block_tables.data_ptr() % 16 == 0
    decode_only = build_attention_metadata(chunks[:2], 16, torch.device("cpu"))
    prefill_first = build_attention_metadata(chunks[2:], 16, torch.device("cpu"))
    assert (decode_only.num_decode_seqs, decode_only.prefill_query_start_loc) == (0, None)
    assert (prefill_first.num_decode_seqs, prefill_first.prefill_query_start_loc) == (0, None)


def test_the_fields_of_an_array_laid_out_as_the_staging_array_are_the_staging_views() -> None:
    flat = torch.arange(DecodeInputs.size(MAX_SEQS, MAX_BLOCKS), dtype=torch.int32)  # as the device's copy
    fields = DecodeInputs.fields(flat, MAX_SEQS)
    assert [f.tolist() for f in fields] == [list(range(i * MAX_SEQS, (i + 1) * MAX_SEQS)) for i in range(4)]
    assert DecodeInputs.packed_start(MAX_SEQS) == 4 * MAX_SEQS
    inputs = _inputs()
    assert inputs.packed.shape == (MAX_SEQS * MAX_BLOCKS,) and inputs.positions.shape == (MAX_SEQS,)
