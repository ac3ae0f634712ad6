"""Per-step attention metadata: positions, slot mapping, block tables, query starts and context lengths.

Built in one place from the step's scheduled chunks and passed explicitly to every attention layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def build_attention_metadata(
    chunks: Sequence[SeqChunk], block_size: int, device: torch.device, max_blocks: int | None = None
) -> AttentionMetadata:
    """Metadata of one step; `max_blocks` fixes the block table width (CUDA graphs need a constant one)."""
    num_tokens = np.fromiter((c.num_tokens for c in chunks), dtype=np.int64, count=len(chunks))
    starts = np.fromiter((c.start for c in chunks), dtype=np.int64, count=len(chunks))
    context_lens = starts + num_tokens
    width = max_blocks if max_blocks is not None else max((len(c.block_ids) for c in chunks), default=1)
    block_tables = np.zeros((len(chunks), max(width, 1)), dtype=np.int32)
    for i, chunk in enumerate(chunks):
        block_tables[i, : len(chunk.block_ids)] = chunk.block_ids
    query_start_loc = np.zeros(len(chunks) + 1, dtype=np.int32)
    np.cumsum(num_tokens, out=query_start_loc[1:])
    seq_index = np.repeat(np.arange(len(chunks)), num_tokens)  # [total_tokens]
    positions = np.arange(int(query_start_loc[-1]), dtype=np.int64) - np.repeat(
        query_start_loc[:-1].astype(np.int64) - starts, num_tokens
    )
    slots = block_tables[seq_index, positions // block_size].astype(np.int64) * block_size + positions % block_size
    # Leading one-token chunks: the scheduler lists decodes before prefill chunks, so they form a prefix.
    one_token = num_tokens == 1
    num_decode = len(chunks) if one_token.all() else int(np.argmin(one_token))
    mixed = 0 < num_decode < len(chunks)
    return AttentionMetadata(
        positions=to_device(positions, device),
        slot_mapping=to_device(slots, device),
        block_tables=to_device(block_tables, device),
        query_start_loc=to_device(query_start_loc, device),
        context_lens=to_device(context_lens.astype(np.int32), device),
        max_query_len=int(num_tokens.max(initial=0)),
        max_context_len=int(context_lens.max(initial=0)),
        num_decode_seqs=num_decode if mixed else 0,
        decode_max_context_len=int(context_lens[:num_decode].max()) if mixed else 0,
        prefill_query_start_loc=to_device(query_start_loc[num_decode:] - num_decode, device) if mixed else None,
        prefill_block_tables=to_device(block_tables[num_decode:], device) if mixed else None,
        prefill_context_lens=to_device(context_lens[num_decode:].astype(np.int32), device) if mixed else None,
    )
