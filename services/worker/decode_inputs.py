"""The host side of a graphed decode step: one int32 staging array holding every input the graph reads.

Layout (n = the largest batch, W = block table width), copied to the device in one transfer of its used prefix:
    [0n, 1n)  token ids        [1n, 2n)  positions       [2n, 3n)  slots (-1: write nowhere)
    [3n, 4n)  context lengths  [4n, 4n + bucket * C)  block tables of the step's rows, row-major [bucket, C]
C is the step's block columns: as many as its longest context needs, not W (W covers max_model_len, 8,192 columns
for 128k tokens, so a thousand rows copied whole would be 32 MiB of mostly unused ids on every step, time the device
spends waiting). The device side scatters the [bucket, C] corner into the graph's [n, W] tables; a row never reads
a column past its own context, so what stays there from earlier steps is never read.
Every row's full table lives in `tables` on the host. A decoding sequence's table changes by at most one entry per
step: each row remembers which block list it holds and how much of it is written, and writes only the new tail.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

import numpy as np

INPUT_FIELDS = 4  # token ids, positions, slots, context lengths
LOOP_ROWS = 80  # where numpy over every row starts to beat a loop over them
Flat = TypeVar("Flat")  # a flat array laid out as the staging array: the host's numpy view or the device's copy


@dataclass(frozen=True, slots=True)
class Staged:
    """What `DecodeInputs.fill` wrote for one step."""

    longest: int  # the step's longest context, in tokens
    columns: int  # the block columns that context reads: the packed corner is [bucket, columns]
    used: int  # elements of the staging array the step's copy carries (the four fields, then the corner)


class DecodeInputs:
    """Fills a staging array (a numpy view, pinned on CUDA) for decode steps of up to `max_seqs` sequences."""

    def __init__(
        self, staging: np.ndarray, max_seqs: int, max_blocks: int, block_size: int, loop_rows: int = LOOP_ROWS
    ) -> None:
        """loop_rows: steps of fewer rows are written row by row, larger ones by numpy over all rows at once."""
        if staging.dtype != np.int32 or staging.shape != (self.size(max_seqs, max_blocks),):
            raise ValueError(f"staging must be int32 [{self.size(max_seqs, max_blocks)}], "
                             f"got {staging.dtype} {staging.shape}")
        self.host = staging
        self.max_seqs = max_seqs
        self.max_blocks = max_blocks
        self.block_size = block_size
        self.loop_rows = loop_rows
        n = max_seqs
        self.token_ids, self.positions, self.slots, self.context_lens = self.fields(staging, n)
        self.packed = staging[self.packed_start(n) :]  # the step's [bucket, columns] corner of `tables`, row-major
        self.tables = np.zeros((n, max_blocks), dtype=np.int32)  # [max_seqs, max_blocks] every row's whole table
        self.token_ids[:] = 0
        self.positions[:] = 0
        self.slots[:] = -1  # rows never filled write nowhere and attend to one entry
        self.context_lens[:] = 1
        # Per row: the block list last written there (held, so its identity stays unique) and its written length.
        self._row_lists: list[Sequence[int] | None] = [None] * n
        self._row_lens = np.zeros(n, dtype=np.int64)

    @staticmethod
    def size(max_seqs: int, max_blocks: int) -> int:
        return max_seqs * (INPUT_FIELDS + max_blocks)

    @staticmethod
    def fields(array: Flat, max_seqs: int) -> tuple[Flat, Flat, Flat, Flat]:
        """The four [max_seqs] input fields of an array laid out as the staging array (token ids, positions, slots,
        context lengths): the host's staging views, or the device copy's views the graphs read."""
        n = max_seqs
        return array[0:n], array[n : 2 * n], array[2 * n : 3 * n], array[3 * n : 4 * n]

    @staticmethod
    def packed_start(max_seqs: int) -> int:
        """Where the packed block-table corner starts in an array laid out as the staging array."""
        return INPUT_FIELDS * max_seqs

    def fill(self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]],
             bucket: int) -> Staged:
        """Writes a step of len(positions) one-token rows: row i runs token_ids[i] at positions[i] of the sequence
        whose block table is block_tables[i] (rows past them, up to `bucket`, become padding). The staging array
        then holds the [bucket, columns] corner of the tables after the four input fields, where columns are what
        the step's longest context reads. Block lists must only grow in place between steps (as the worker's
        sequence table keeps them); a different list object is rewritten whole."""
        n = len(positions)
        if not n <= bucket <= self.max_seqs:
            raise ValueError(f"{n} sequences do not fit a bucket of {bucket} (at most {self.max_seqs})")
        if n == 0:
            raise ValueError("a decode step needs at least one sequence")
        # numpy's cost per call outweighs a loop over a few rows: both write the same values.
        fill_rows = self._fill_each if n < self.loop_rows else self._fill_all
        longest = fill_rows(token_ids, positions, block_tables)
        self.slots[n:bucket] = -1
        self.context_lens[n:bucket] = 1
        # Padding rows read column 0 of whatever table their row last held (a valid block: they attend to one entry).
        columns = -(-longest // self.block_size)
        self.packed[: bucket * columns].reshape(bucket, columns)[:] = self.tables[:bucket, :columns]
        return Staged(longest, columns, self.packed_start(self.max_seqs) + bucket * columns)

    def _fill_each(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]]
    ) -> int:
        n, bsz = len(positions), self.block_size
        slots = []
        for i, (pos, blocks) in enumerate(zip(positions, block_tables)):
            num = len(blocks)
            if num > self.max_blocks:
                raise ValueError(f"a block table of {num} blocks exceeds the graphs' width {self.max_blocks}")
            held = int(self._row_lens[i])
            if self._row_lists[i] is blocks and held <= num:
                if held < num:
                    self.tables[i, held:num] = blocks[held:]
            else:
                self.tables[i, :num] = blocks
                self._row_lists[i] = blocks
            self._row_lens[i] = num
            if pos // bsz >= num:
                raise ValueError(f"row {i}: position {pos} is past its block table of {num} blocks")
            slots.append(blocks[pos // bsz] * bsz + pos % bsz)
        self.token_ids[:n] = token_ids
        self.positions[:n] = positions
        self.slots[:n] = slots
        self.context_lens[:n] = self.positions[:n] + 1
        return max(positions) + 1

    def _fill_all(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]]
    ) -> int:
        n = len(positions)
        lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=n)  # [n] blocks per row
        if int(lens.max()) > self.max_blocks:
            raise ValueError(f"a block table of {int(lens.max())} blocks exceeds the graphs' width {self.max_blocks}")
        # Per row, the first column to write: past what it holds of the same list, else 0 (the whole list).
        held = self._row_lens[:n]
        same = np.fromiter(map(operator.is_, self._row_lists[:n], block_tables), dtype=bool, count=n)  # [n]
        first = np.where(same & (held <= lens), held, 0)
        todo = np.flatnonzero(first < lens)
        if todo.size:
            counts = lens[todo] - first[todo]  # [len(todo)]
            total = int(counts.sum())
            values = np.fromiter(
                chain.from_iterable(block_tables[i][f:] for i, f in zip(todo.tolist(), first[todo].tolist())),
                dtype=np.int32, count=total,
            )
            rows = np.repeat(todo, counts)
            # column = the row's first column + the value's index within the row's run
            cols = np.arange(total) - np.repeat(np.cumsum(counts) - counts - first[todo], counts)
            self.tables[rows, cols] = values
        self._row_lists[:n] = block_tables
        self._row_lens[:n] = lens
        pos = np.asarray(positions, dtype=np.int64)  # [n]
        block_index = pos // self.block_size
        if (block_index >= lens).any():
            row = int(np.flatnonzero(block_index >= lens)[0])
            raise ValueError(f"row {row}: position {positions[row]} is past its block table of {int(lens[row])} blocks")
        self.token_ids[:n] = token_ids
        self.positions[:n] = pos
        self.slots[:n] = self.tables[np.arange(n), block_index] * self.block_size + pos % self.block_size
        self.context_lens[:n] = pos + 1
        return int(pos.max()) + 1
