"""Per-step attention metadata: positions, slot mapping, block tables, query starts and context lengths.

Built in one place from the step's rows (`step_metadata`) and passed explicitly to every attention layer. A step past
the decode graphs sends its metadata and its other inputs to the device in one copy (`to_device_packed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class SeqChunk:
    """The tokens one sequence runs in a step: positions [start, start + num_tokens) of its block table."""

    start: int
    num_tokens: int
    block_ids: Sequence[int]


@dataclass(slots=True)
class AttentionMetadata:
    positions: torch.Tensor  # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64, block_id * block_size + offset
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, rows padded with 0
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    context_lens: torch.Tensor  # [num_seqs] int32, KV entries after this step's writes
    max_query_len: int
    max_context_len: int
    # Decode kernel split count; None lets the kernel choose (graphs fix it at capture).
    decode_num_splits: int | None = None
    # A mixed step: its first num_decode_seqs sequences run one token each and take the decode kernel (the prefill
    # kernel would give each single query a whole tile and read its KV once per query head); the rest take the
    # prefill kernel with prefill_query_start_loc ([num_seqs - num_decode_seqs + 1] int32, from 0).
    num_decode_seqs: int = 0
    decode_max_context_len: int = 0
    prefill_query_start_loc: torch.Tensor | None = None
    # The prefill rows' block tables and context lengths as tensors of their own: slices past the decode rows would
    # start at addresses of any alignment, and the kernels compile a variant per alignment of their pointers.
    prefill_block_tables: torch.Tensor | None = None  # [num_seqs - num_decode_seqs, max_blocks] int32
    prefill_context_lens: torch.Tensor | None = None  # [num_seqs - num_decode_seqs] int32
    # The decode kernel's tiling for a mixed step's decode rows (kernels.decode_attention.DecodeConfig), when the
    # worker fixes it: the decode graph of their batch bucket's, so that no kernel variant compiles while serving.
    decode_config: Any = None

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def is_decode(self) -> bool:
        """Every sequence runs exactly one token, so the decode kernel applies."""
        return self.max_query_len == 1


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device without waiting: copied through pinned memory on CUDA. (A copy from pageable memory
    first waits for everything queued on the stream, which would hold the host until the step before has finished.)"""
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


ALIGN_BYTES = 16  # the kernels specialise on 16-byte aligned pointers: every packed array starts at such an offset


def to_device_packed(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The arrays on the device in one host-to-device copy, viewed back at each one's dtype and shape. Packed into
    one pinned byte buffer: each copy of its own costs the host a pinned buffer and a launch, and the device, done
    with the step before, would wait between a step's copies while the host builds the next array."""
    offsets, total = [], 0
    for array in arrays:
        offsets.append(total)
        total += -(-array.nbytes // ALIGN_BYTES) * ALIGN_BYTES
    host = torch.empty(total, dtype=torch.uint8, pin_memory=device.type == "cuda")
    flat = host.numpy()
    for array, offset in zip(arrays, offsets, strict=True):
        flat[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    packed = host.to(device, non_blocking=True) if device.type == "cuda" else host.to(device)
    return [packed[offset : offset + array.nbytes].view(_TORCH_DTYPES[array.dtype]).view(array.shape)
            for array, offset in zip(arrays, offsets, strict=True)]


_TORCH_DTYPES = {np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}


def build_attention_metadata(
    chunks: Sequence[SeqChunk], block_size: int, device: torch.device, max_blocks: int | None = None
) -> AttentionMetadata:
    """Metadata of one step given as chunks (see `step_metadata`)."""
    meta, _ = step_metadata([c.start for c in chunks], [c.num_tokens for c in chunks], [c.block_ids for c in chunks],
                            block_size, device, max_blocks)
    return meta


def step_metadata(
    starts: Sequence[int], num_tokens: Sequence[int], block_tables: Sequence[Sequence[int]], block_size: int,
    device: torch.device, max_blocks: int | None = None, extra: Sequence[np.ndarray] = (),
    sample_rows: Sequence[int] | None = None,
) -> tuple[AttentionMetadata, list[torch.Tensor]]:
    """Metadata of one step whose row i runs num_tokens[i] tokens from position starts[i] of the sequence whose block
    table is block_tables[i]; `max_blocks` fixes the block table width (CUDA graphs need a constant one). extra:
    further int32 or int64 host arrays the step needs on the device, carried in the same copy and returned on the
    device in their order. sample_rows: rows whose last token's hidden state is read out; when given, the returned
    list ends with those tokens' indices in the step, [len(sample_rows)] int64."""
    n = len(starts)
    counts = np.asarray(num_tokens, dtype=np.int64).reshape(n)  # [num_seqs]
    first = np.asarray(starts, dtype=np.int64).reshape(n)  # [num_seqs]
    context_lens = (first + counts).astype(np.int32)
    lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=n)  # [num_seqs] blocks per row
    width = max_blocks if max_blocks is not None else int(lens.max(initial=1))
    if int(lens.max(initial=0)) > width:
        raise ValueError(f"a block table of {int(lens.max())} blocks exceeds the width {width}")
    tables = np.zeros((n, max(width, 1)), dtype=np.int32)
    # Row-major: the mask's True entries run through each row's own blocks in order.
    tables[np.arange(tables.shape[1]) < lens[:, None]] = np.fromiter(
        chain.from_iterable(block_tables), dtype=np.int32, count=int(lens.sum()))
    query_start_loc = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=query_start_loc[1:])
    seq_index = np.repeat(np.arange(n), counts)  # [total_tokens]
    positions = np.arange(int(query_start_loc[-1]), dtype=np.int64) - np.repeat(
        query_start_loc[:-1].astype(np.int64) - first, counts
    )
    slots = tables[seq_index, positions // block_size].astype(np.int64) * block_size + positions % block_size
    # Leading one-token chunks: the scheduler lists decodes before prefill chunks, so they form a prefix.
    one_token = counts == 1
    num_decode = n if one_token.all() else int(np.argmin(one_token))
    mixed = 0 < num_decode < n
    arrays = [positions, slots, tables, query_start_loc, context_lens]
    if mixed:
        arrays += [query_start_loc[num_decode:] - num_decode, tables[num_decode:], context_lens[num_decode:]]
    if sample_rows is not None:
        extra = [*extra, query_start_loc[1:][np.asarray(sample_rows, dtype=np.int64)].astype(np.int64) - 1]
    on_device = to_device_packed([*arrays, *extra], device)
    meta = AttentionMetadata(
        *on_device[:5],
        max_query_len=int(counts.max(initial=0)),
        max_context_len=int(context_lens.max(initial=0)),
        num_decode_seqs=num_decode if mixed else 0,
        decode_max_context_len=int(context_lens[:num_decode].max()) if mixed else 0,
    )
    if mixed:
        meta.prefill_query_start_loc, meta.prefill_block_tables, meta.prefill_context_lens = on_device[5:8]
    return meta, on_device[len(arrays):]
