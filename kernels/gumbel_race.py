"""The exponential race of sampling, one draw per row: argmax(x + Gumbel noise), the noise computed on the fly.

A row's noise comes from its key (two 32-bit values): token t gets u = (h + 0.5) / 2**32 with h a counter-based
hash of (key, t), then g = -log(-log(u)) computed in float64 and rounded to fp32. float64 keeps every bit of the
hash, and math libraries' float64 logs differ by an ulp at most, far below fp32's rounding: a key gives the same
noise on CPU and GPU. `gumbel_noise_ref` computes it with torch's integer and float64 ops, a full pass over
[rows, vocab] per op; `gumbel_race` computes it per token inside one pass over x that also reduces each row to its
argmax (the chunked first maximum of `kernels.argmax`), so the noise is never stored. Its tokens equal
`gumbel_race_ref`'s exactly, ties (first index) and NaN (first NaN, as torch.argmax) included.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kernels._checks import check_inner_contiguous, check_launchable, check_same_device, check_tensor
from kernels._paged_tile import IS_INTERPRETER
from kernels.argmax import BIG, CHUNK, argmax_of_chunks, check_argmax_args, first_max

_MASK32 = (1 << 32) - 1
# Odd 31-bit multipliers: a value below 2**32 times one of them stays below 2**63, so the reference's int64
# products never overflow; the kernel multiplies in uint32, which keeps the same low 32 bits.
_MUL_A = 0x7FEB352D
_MUL_B = 0x21F0AAAD


def _mix32_ref(h: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * _MUL_A) & _MASK32
    h = h ^ (h >> 15)
    h = (h * _MUL_B) & _MASK32
    return h ^ (h >> 15)


def gumbel_noise_ref(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel noise [num_keys, vocab_size] fp32 from keys [num_keys, 2] int64, each value in [0, 2**32)."""
    tokens = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    h = _mix32_ref(tokens.unsqueeze(0) ^ keys[:, :1])  # [num_keys, vocab_size]
    h = _mix32_ref(h ^ keys[:, 1:])
    uniform = (h.to(torch.float64) + 0.5) * 2.0**-32  # in (0, 1)
    return uniform.log_().neg_().log_().neg_().to(torch.float32)


@triton.jit
def _mix32(h):
    # _mix32_ref on uint32 lanes: shifts are logical, products wrap modulo 2**32.
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x21F0AAAD
    return h ^ (h >> 15)


@triton.jit
def _log64(x):
    # libdevice's log is the CUDA math library's, the one torch's CUDA float64 log calls; the interpreter has no
    # libdevice, and numpy's log stands in.
    if IS_INTERPRETER:
        y = tl.log(x)
    else:
        y = libdevice.log(x)
    return y


@triton.jit
def _race_chunks_kernel(
    x_ptr, rows_ptr, keys_ptr, part_val_ptr, part_idx_ptr, n, stride_x, stride_k0, stride_k1, num_chunks,
    HAS_ROWS: tl.constexpr, CHUNK_SIZE: tl.constexpr, BIG: tl.constexpr,
):
    draw = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if HAS_ROWS:
        row = tl.load(rows_ptr + draw)
    else:
        row = draw
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    valid = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=float("-inf")).to(tl.float32)
    key0 = tl.load(keys_ptr + draw * stride_k0).to(tl.uint32)
    key1 = tl.load(keys_ptr + draw * stride_k0 + stride_k1).to(tl.uint32)
    h = _mix32(_mix32(cols.to(tl.uint32) ^ key0) ^ key1)
    uniform = (h.to(tl.float64) + 0.5) * 2.0**-32
    noise = (-_log64(-_log64(uniform))).to(tl.float32)
    best, index = first_max(x + noise, cols, valid, BIG)
    tl.store(part_val_ptr + draw * num_chunks + chunk, best)
    tl.store(part_idx_ptr + draw * num_chunks + chunk, index)


def _check_args(x: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor | None) -> int:
    """Returns the number of draws."""
    check_argmax_args(x, None)
    check_tensor("keys", keys, 2, (torch.int64,))
    if keys.shape[1] != 2:
        raise ValueError(f"keys must be [num_draws, 2], got {tuple(keys.shape)}")
    num_draws = keys.shape[0]
    check_same_device(x=x, keys=keys)
    if rows is None:
        if num_draws != x.shape[0]:
            raise ValueError(f"without rows, keys need one pair per row of x: {num_draws} != {x.shape[0]}")
    else:
        check_tensor("rows", rows, 1, (torch.int64,))
        if rows.shape[0] != num_draws:
            raise ValueError(f"rows must be [{num_draws}], one per pair of keys, got {tuple(rows.shape)}")
        check_same_device(x=x, rows=rows)
        check_inner_contiguous("rows", rows)
    if out is not None:
        check_tensor("out", out, 1, (torch.int64,))
        if out.shape[0] != num_draws or out.device != x.device:
            raise ValueError(f"out must be [{num_draws}] int64 on {x.device}, got {tuple(out.shape)} on {out.device}")
        check_inner_contiguous("out", out)
    return num_draws


def gumbel_race(
    x: torch.Tensor,
    keys: torch.Tensor,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """x [num_rows, n] float scores, keys [num_draws, 2] int64 (values in [0, 2**32)), rows [num_draws] int64 in
    [0, num_rows) or None (draw i on row i) → [num_draws] int64: draw i's token, the argmax of its row of x in fp32
    plus `gumbel_noise_ref(keys[i:i+1], n)`. Reads x once, writes nothing else of its size, never syncs."""
    num_draws = _check_args(x, keys, rows, out)
    if chunk <= 0 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    check_launchable(x.device)
    n = x.shape[1]
    if out is None:
        out = torch.empty(num_draws, dtype=torch.int64, device=x.device)
    if num_draws == 0:
        return out

    def launch_chunks(grid: tuple[int, int], part_val: torch.Tensor, part_idx: torch.Tensor, num_chunks: int,
                      chunk_size: int) -> None:
        _race_chunks_kernel[grid](
            x, keys if rows is None else rows, keys, part_val, part_idx, n, x.stride(0), keys.stride(0),
            keys.stride(1), num_chunks, HAS_ROWS=rows is not None, CHUNK_SIZE=chunk_size, BIG=BIG, num_warps=8,
        )

    return argmax_of_chunks(num_draws, n, chunk, out, launch_chunks)


def gumbel_race_ref(
    x: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain torch version of gumbel_race (x is not written to)."""
    _check_args(x, keys, rows, out)
    picked = x if rows is None else x.index_select(0, rows)  # [num_draws, n]
    noisy = gumbel_noise_ref(keys, x.shape[1]).add_(picked)
    result = noisy.argmax(dim=-1)
    return result if out is None else out.copy_(result)
