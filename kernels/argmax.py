"""Row-wise argmax over a wide last dimension (greedy sampling over the vocabulary), in two short launches.

torch's reduction gives a single-row argmax over a 128k vocabulary one block of threads, so one SM does all the
work; here the row is cut into chunks reduced by separate programs, then one program per row merges the chunks.
Same answer as `torch.argmax(x, dim=-1)`: the first index of the largest value, and the first NaN if any.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from kernels._checks import FLOAT_DTYPES, check_inner_contiguous, check_launchable, check_tensor

CHUNK = 4096  # elements one program of the first pass reduces
BIG = 2**31 - 1  # an index past every column: "none" in the first-index reductions


@triton.jit
def first_max(values, index, valid, BIG: tl.constexpr):
    # (value, index) of the first NaN if any, else of the first largest value; `valid` masks padding lanes.
    is_nan = valid & (values != values)
    first_nan = tl.min(tl.where(is_nan, index, BIG), axis=0)
    finite = tl.where(valid & (values == values), values, float("-inf"))
    best = tl.max(finite, axis=0)
    first_best = tl.min(tl.where(valid & (finite == best), index, BIG), axis=0)
    has_nan = first_nan < BIG
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, first_nan, first_best)


@triton.jit
def _argmax_chunks_kernel(
    x_ptr, part_val_ptr, part_idx_ptr, n, stride_x, num_chunks, CHUNK_SIZE: tl.constexpr, BIG: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    valid = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=float("-inf")).to(tl.float32)
    best, index = first_max(x, cols, valid, BIG)
    tl.store(part_val_ptr + row * num_chunks + chunk, best)
    tl.store(part_idx_ptr + row * num_chunks + chunk, index)


@triton.jit
def _argmax_merge_kernel(
    part_val_ptr, part_idx_ptr, out_ptr, num_chunks, BLOCK_CHUNKS: tl.constexpr, BIG: tl.constexpr,
):
    # Chunks are in index order, so the first chunk holding the best value holds its first index.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_CHUNKS)
    valid = offs < num_chunks
    values = tl.load(part_val_ptr + row * num_chunks + offs, mask=valid, other=float("-inf"))
    _, chunk = first_max(values, offs, valid, BIG)
    tl.store(out_ptr + row, tl.load(part_idx_ptr + row * num_chunks + chunk).to(tl.int64))


def check_argmax_args(x: torch.Tensor, out: torch.Tensor | None) -> None:
    """x [num_rows, n] float with a dense last dimension, 0 < n < 2**31 - 1; out [num_rows] int64 or None."""
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_inner_contiguous("x", x)
    if x.shape[1] == 0:
        raise ValueError("x must have at least one column")
    if x.shape[1] >= 2**31 - 1:
        raise ValueError(f"x has {x.shape[1]} columns; at most 2**31 - 2 are supported")
    if out is not None:
        check_tensor("out", out, 1, (torch.int64,))
        if out.shape[0] != x.shape[0] or out.device != x.device:
            raise ValueError(f"out must be [{x.shape[0]}] int64 on {x.device}, got {tuple(out.shape)} on {out.device}")
        check_inner_contiguous("out", out)


def argmax_rows(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [num_rows, n] float → [num_rows] int64, equal to torch.argmax(x, dim=-1). Never syncs (graph-safe)."""
    check_argmax_args(x, out)
    check_launchable(x.device)
    num_rows, n = x.shape
    if out is None:
        out = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    if num_rows == 0:
        return out

    def launch_chunks(grid: tuple[int, int], part_val: torch.Tensor, part_idx: torch.Tensor, num_chunks: int,
                      chunk_size: int) -> None:
        _argmax_chunks_kernel[grid](x, part_val, part_idx, n, x.stride(0), num_chunks, CHUNK_SIZE=chunk_size, BIG=BIG,
                                    num_warps=8)

    return argmax_of_chunks(num_rows, n, CHUNK, out, launch_chunks)


def argmax_of_chunks(
    num_rows: int, n: int, chunk: int, out: torch.Tensor,
    launch_chunks: Callable[[tuple[int, int], torch.Tensor, torch.Tensor, int, int], None],
) -> torch.Tensor:
    """The two passes over rows of n columns cut into chunks of `chunk` (a power of two): `launch_chunks(grid,
    part_val, part_idx, num_chunks, chunk_size)` launches one program per (row, chunk) of grid that stores the
    chunk's `first_max` (value, index) at [row, chunk] of part_val [num_rows, num_chunks] fp32 and part_idx
    (int32); then one program per row writes the first index of the row's maximum to out [num_rows] int64."""
    num_chunks = triton.cdiv(n, chunk)
    chunk_size = min(chunk, triton.next_power_of_2(n))
    part_val = torch.empty((num_rows, num_chunks), dtype=torch.float32, device=out.device)
    part_idx = torch.empty((num_rows, num_chunks), dtype=torch.int32, device=out.device)
    launch_chunks((num_rows, num_chunks), part_val, part_idx, num_chunks, chunk_size)
    _argmax_merge_kernel[(num_rows,)](
        part_val, part_idx, out, num_chunks, BLOCK_CHUNKS=triton.next_power_of_2(num_chunks), BIG=BIG, num_warps=1,
    )
    return out


def argmax_rows_ref(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Plain torch version of argmax_rows."""
    check_argmax_args(x, out)
    result = torch.argmax(x, dim=-1)
    return result if out is None else out.copy_(result)
