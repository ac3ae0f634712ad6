"""The host side of a graphed decode step: one int32 staging array holding every input the graph reads.

Layout (n = the largest batch, W = block table width), copied to the device in one transfer of its used prefix:
    [0n, 1n)  token ids        [1n, 2n)  positions       [2n, 3n)  slots (-1: write nowhere)
    [3n, 4n)  context lengths  [4n, 4n + n * W)  block tables, row-major
Block tables are the bulk of it, and a decoding sequence's table changes by at most one entry per step: each
row remembers which block list it holds and how much of it is written, and writes only the new tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.worker.attention_metadata import SeqChunk

INPUT_FIELDS = 4  # token ids, positions, slots, context lengths


class DecodeInputs:
    """Fills a staging array (a numpy view, pinned on CUDA) for decode steps of up to `max_seqs` sequences."""

    def __init__(self, staging: np.ndarray, max_seqs: int, max_blocks: int, block_size: int) -> None:
        if staging.dtype != np.int32 or staging.shape != (self.size(max_seqs, max_blocks),):
            raise ValueError(f"staging must be int32 [{self.size(max_seqs, max_blocks)}], got {staging.dtype} {staging.shape}")
        self.host = staging
        self.max_seqs = max_seqs
        self.max_blocks = max_blocks
        self.block_size = block_size
        n = max_seqs
        self.token_ids, self.positions, self.slots, self.context_lens = (staging[i * n : (i + 1) * n] for i in range(4))
        self.tables = staging[INPUT_FIELDS * n :].reshape(n, max_blocks)  # [max_seqs, max_blocks]
        self.tables[:] = 0
        self.token_ids[:] = 0
        self.positions[:] = 0
        self.slots[:] = -1  # rows never filled write nowhere and attend to one entry
        self.context_lens[:] = 1
        # Per row: the block list last written there (held, so its identity stays unique) and its written length.
        self._row_lists: list[Sequence[int] | None] = [None] * n
        self._row_lens = [0] * n

    @staticmethod
    def size(max_seqs: int, max_blocks: int) -> int:
        return max_seqs * (INPUT_FIELDS + max_blocks)

    def used(self, bucket: int) -> int:
        """Elements of the staging array a graph of `bucket` rows reads: the prefix to copy."""
        return INPUT_FIELDS * self.max_seqs + bucket * self.max_blocks

    def fill(self, token_ids: Sequence[int], chunks: Sequence[SeqChunk], bucket: int) -> int:
        """Writes a step of len(chunks) one-token chunks (rows past them, up to `bucket`, become padding).
        Returns the longest context length of the step. Block lists must only grow in place between steps
        (as the worker's sequence table keeps them); a different list object is rewritten whole."""
        n = len(chunks)
        if not n <= bucket <= self.max_seqs:
            raise ValueError(f"{n} sequences do not fit a bucket of {bucket} (at most {self.max_seqs})")
        bsz = self.block_size
        positions = [c.start for c in chunks]
        slots = []
        for i, chunk in enumerate(chunks):
            blocks = chunk.block_ids
            num = len(blocks)
            if num > self.max_blocks:
                raise ValueError(f"a block table of {num} blocks exceeds the graphs' width {self.max_blocks}")
            if self._row_lists[i] is blocks and self._row_lens[i] <= num:
                if self._row_lens[i] < num:
                    self.tables[i, self._row_lens[i] : num] = blocks[self._row_lens[i] :]
            else:
                self.tables[i, :num] = blocks
                self._row_lists[i] = blocks
            self._row_lens[i] = num
            pos = positions[i]
            slots.append(blocks[pos // bsz] * bsz + pos % bsz)
        self.token_ids[:n] = token_ids
        self.positions[:n] = positions
        self.slots[:n] = slots
        longest = max(positions) + 1
        self.context_lens[:n] = self.positions[:n] + 1
        self.slots[n:bucket] = -1
        self.context_lens[n:bucket] = 1
        return longest
