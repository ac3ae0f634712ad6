"""A step's attention metadata and extra inputs travel to the device in one copy, each array at an aligned offset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.worker.attention_metadata import step_metadata, to_device_packed

CPU = torch.device("cpu")


def test_packed_arrays_come_back_with_their_values_dtypes_and_shapes_from_one_buffer_at_aligned_offsets() -> None:
    arrays = [np.array([5, -1, 7], dtype=np.int64), np.arange(5, dtype=np.int32),
              np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32), np.zeros(0, dtype=np.int64),
              np.array([9], dtype=np.int32)]
    out = to_device_packed(arrays, CPU)
    assert [t.tolist() for t in out] == [[5, -1, 7], [0, 1, 2, 3, 4], [[1, 2, 3], [4, 5, 6]], [], [9]]
    assert [t.dtype for t in out] == [torch.int64, torch.int32, torch.int32, torch.int64, torch.int32]
    assert [tuple(t.shape) for t in out] == [(3,), (5,), (2, 3), (0,), (1,)]
    assert len({t.untyped_storage().data_ptr() for t in out}) == 1  # one buffer, so one copy on a GPU
    # 24, 20, 24, 0 and 4 bytes, each rounded up to 16 (an empty tensor has no address of its own)
    assert [t.data_ptr() - out[0].data_ptr() for t in out if t.numel()] == [0, 32, 64, 96]
    assert all(t.data_ptr() % 16 == 0 for t in out)


def test_a_packed_array_is_copied_so_later_writes_to_the_host_array_do_not_reach_it() -> None:
    host = np.array([1, 2, 3], dtype=np.int64)
    (dev,) = to_device_packed([host], CPU)
    host[:] = 0
    assert dev.tolist() == [1, 2, 3]


def test_step_metadata_holds_each_rows_positions_slots_and_padded_table_and_returns_the_extras_in_order() -> None:
    # Row 0 decodes position 17 (block 1 of [4, 9]); row 1 prefills positions 0..2 of block [6].
    meta, (ids, rows) = step_metadata([17, 0], [1, 3], [[4, 9], [6]], 16, CPU,
                                      extra=(np.array([11, 12, 13, 14], dtype=np.int64), np.array([0, 3])))
    assert meta.positions.tolist() == [17, 0, 1, 2]
    assert meta.slot_mapping.tolist() == [9 * 16 + 1, 6 * 16, 6 * 16 + 1, 6 * 16 + 2]
    assert meta.block_tables.tolist() == [[4, 9], [6, 0]]
    assert meta.query_start_loc.tolist() == [0, 1, 4] and meta.context_lens.tolist() == [18, 3]
    assert (meta.max_query_len, meta.max_context_len, meta.num_decode_seqs, meta.decode_max_context_len) == (3, 18, 1,
                                                                                                           18)
    assert meta.prefill_query_start_loc.tolist() == [0, 3] and meta.prefill_block_tables.tolist() == [[6, 0]]
    assert (ids.tolist(), ids.dtype, rows.tolist(), rows.dtype) == ([11, 12, 13, 14], torch.int64, [0, 3], torch.int64)


def test_step_metadata_ends_the_extras_with_the_last_token_of_each_sampled_row() -> None:
    # Rows of 1, 3 and 2 tokens end at tokens 0, 3 and 5; rows 2 and 0 are sampled, in that order.
    _, (ids, last) = step_metadata([5, 0, 0], [1, 3, 2], [[1], [2], [3]], 16, CPU,
                                   extra=(np.arange(6, dtype=np.int64),), sample_rows=[2, 0])
    assert (ids.tolist(), last.tolist(), last.dtype) == ([0, 1, 2, 3, 4, 5], [5, 0], torch.int64)
    _, (none_sampled,) = step_metadata([0], [4], [[1]], 16, CPU, sample_rows=[])
    assert none_sampled.tolist() == [] and none_sampled.dtype == torch.int64


def test_a_fixed_table_width_pads_every_row_and_refuses_a_longer_table() -> None:
    meta, extra = step_metadata([0], [1], [[3]], 16, CPU, max_blocks=4)
    assert meta.block_tables.tolist() == [[3, 0, 0, 0]] and extra == []
    with pytest.raises(ValueError, match="^a block table of 3 blocks exceeds the width 2$"):
        step_metadata([0, 40], [1, 1], [[1], [2, 3, 4]], 16, CPU, max_blocks=2)
