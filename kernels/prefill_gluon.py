"""Paged prefill flash attention for Hopper (sm_90) in Gluon: config, support checks and launcher.

Same semantics as kernels.prefill_attention.paged_prefill_attention (packed variable-length queries that are the last
positions of their context, paged K/V, GQA, causal or encoder mode); the kernel, FA3's structure written by hand in
Triton's explicit-layout dialect, is in kernels/prefill_gluon_kernel.py. kernels.prefill_attention's
paged_prefill_attention runs it for head dims 64 and 128 on sm_90 when no config is given: it overlaps each
warpgroup's softmax with its tensor-core products, which the Triton kernel cannot express (figures against cuDNN:
bench/results/kernels_h100.md; how it got there: bench/EXPERIMENTS.md).

The module imports without Gluon (CPU CI, other Triton versions): `supports_hopper_prefill` then returns False and
the launcher raises a RuntimeError.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kernels._attention_common import check_prefill_args
from kernels._paged_tile import LOG2_E
from kernels.launch_memo import SignatureMemo, TensorMemo, device_capability, register_memo, sm_count
from kernels.prefill_gluon_kernel import BLOCK_M, CONSUMER_WARPS, GLUON_IMPORT_ERROR, HALF_M, gluon

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from kernels.prefill_gluon_kernel import _prefill_hopper_kernel

SUPPORTED_HEAD_DIMS = (64, 128)
SCHEDULES = ("independent", "pingpong")
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one H100 program may use


@dataclass(frozen=True)
class HopperPrefillConfig:
    """Key tile, K/V ring depth and schedule of the Gluon prefill kernel.

    block_n: keys per tile (64 or 128). stages: K/V buffers in the ring (2-4), filled by the producer warp as the
    consumers release them. schedule: "independent" (each warpgroup issues its products when its operands are
    ready) or "pingpong" (the two take turns, so one's softmax runs under the other's products). The grid is
    persistent: one program per SM walks the work items heaviest first.
    """

    block_n: int = 128
    stages: int = 2
    schedule: str = "independent"

    def __post_init__(self) -> None:
        if self.block_n not in (64, 128):
            raise ValueError(f"block_n must be 64 or 128, got {self.block_n}")
        if not 2 <= self.stages <= 4:
            raise ValueError(f"stages must be between 2 and 4, got {self.stages}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def shared_bytes(self, head_dim: int, element_size: int = 2) -> int:
        """Shared memory of the explicit buffers: Q, and K and V rings (barriers and scratch not counted)."""
        return element_size * head_dim * (BLOCK_M + 2 * self.stages * self.block_n)


@functools.lru_cache(maxsize=64)
def default_hopper_prefill_config(head_dim: int, block_size: int) -> HopperPrefillConfig:
    """FA3's tile (128 x 128, two stages); at head_dim 64 the warpgroups take turns (ping-pong). The fastest on the
    H100 in four benchmark runs (bench/EXPERIMENTS.md): at d128 independent warpgroups lead ping-pong on long
    sequences, at d64 ping-pong leads."""
    if head_dim == 64:
        return HopperPrefillConfig(schedule="pingpong")
    return HopperPrefillConfig()


def gluon_layout_signature(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor | None) -> tuple:
    """Every fact of its arguments that gluon_layout_unsupported_reason reads, and no more (q's token count is not
    one of them, so a step's layers and its varying batch sizes share a key): devices, dtypes, shapes, strides and
    16-byte alignments. The decisions memoized by this key must read nothing else of the tensors."""
    value_cache = key_cache if value_cache is None else value_cache
    return (q.device, q.dtype, q.shape[1:], q.stride(), q.data_ptr() % 16,
            key_cache.dtype, key_cache.shape, key_cache.stride(), key_cache.data_ptr() % 16,
            value_cache.dtype, value_cache.shape, value_cache.stride(), value_cache.data_ptr() % 16)


_LAYOUT_REASONS: SignatureMemo[str | None] = SignatureMemo()
_PREFILL_REASONS: SignatureMemo[str | None] = SignatureMemo()


def gluon_layout_unsupported_reason(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor | None
                                    ) -> str | None:
    """What keeps a Gluon attention kernel (prefill or decode) from these tensors, None if nothing: Gluon missing, not
    an sm_90 CUDA device, a dtype or head_dim it was not built for, or a layout the TMA copies cannot address.
    Decided once per gluon_layout_signature."""
    return _LAYOUT_REASONS.get(gluon_layout_signature(q, key_cache, value_cache),
                               lambda: _gluon_layout_unsupported_reason(q, key_cache, value_cache))


def hopper_prefill_unsupported_reason(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    config: HopperPrefillConfig | None = None,
) -> str | None:
    """Why the Gluon prefill kernel cannot serve these tensors (None when it can): gluon_layout_unsupported_reason,
    or a config whose buffers do not fit in shared memory. Decided once per (gluon_layout_signature, config)."""
    return _PREFILL_REASONS.get((gluon_layout_signature(q, key_cache, value_cache), config),
                                lambda: _hopper_prefill_unsupported_reason(q, key_cache, value_cache, config))


def _gluon_layout_unsupported_reason(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor | None
                                     ) -> str | None:
    """gluon_layout_unsupported_reason's decision, derived afresh."""
    if gluon is None:
        return f"Gluon is not importable ({GLUON_IMPORT_ERROR})"
    if q.device.type != "cuda" or not torch.cuda.is_available():
        return f"needs a CUDA device, got {q.device}"
    if device_capability(q.device) != (9, 0):
        return f"needs compute capability 9.0 (Hopper), got {device_capability(q.device)}"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"needs bf16 or fp16, got {q.dtype}"
    if q.dim() != 3 or key_cache.dim() != 4:
        return "needs q [tokens, heads, head_dim] and caches [blocks, block_size, kv_heads, head_dim]"
    if key_cache.dtype != q.dtype:
        return f"needs the cache in q's dtype {q.dtype}, got {key_cache.dtype}"
    head_dim = q.shape[2]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}"
    block_size = key_cache.shape[1]
    if block_size < 8 or block_size & (block_size - 1):
        return f"block_size must be a power of two >= 8 (a TMA box per page run), got {block_size}"
    if q.stride(2) != 1 or q.stride(1) != head_dim or (q.stride(0) * q.element_size()) % 16 or q.data_ptr() % 16:
        return "q must have contiguous, 16-byte aligned [heads, head_dim] rows"
    caches = (("key_cache", key_cache), ("value_cache", key_cache if value_cache is None else value_cache))
    for name, cache in caches:
        # The cache is read as [num_blocks * block_size, num_kv_heads * head_dim] with one row stride.
        if cache.stride(3) != 1 or cache.stride(2) != head_dim or cache.stride(0) != block_size * cache.stride(1):
            return f"{name} must be [blocks, block_size, kv_heads, head_dim] with uniform row stride"
        if (cache.stride(1) * cache.element_size()) % 16 or cache.data_ptr() % 16:
            return f"{name} rows must be 16-byte aligned"
        if cache.shape[0] * block_size >= 2**31:
            return f"{name} has more than 2**31 rows (TMA coordinates are 32-bit)"
    return None


def _hopper_prefill_unsupported_reason(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, config: HopperPrefillConfig | None
) -> str | None:
    reason = _gluon_layout_unsupported_reason(q, key_cache, value_cache)
    if reason is not None:
        return reason
    head_dim, block_size = q.shape[2], key_cache.shape[1]
    cfg = config or default_hopper_prefill_config(head_dim, block_size)
    # Compiled sizes (sm_90, Triton 3.6): the explicit buffers, ~100 bytes of barriers and the two warpgroups'
    # epilogue staging, counted here as a [BLOCK_M, head_dim] buffer (d128: 180 KB compiled, 193 KB counted).
    needed = cfg.shared_bytes(head_dim, q.element_size()) + 1024 + BLOCK_M * head_dim * q.element_size()
    if needed > SMEM_LIMIT:
        return f"{cfg} needs about {needed} bytes of shared memory (at most {SMEM_LIMIT})"
    return None


def supports_hopper_prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    config: HopperPrefillConfig | None = None,
) -> bool:
    """True only on an sm_90 CUDA device with Gluon importable and a layout the kernel's TMA copies can read."""
    return hopper_prefill_unsupported_reason(q, key_cache, value_cache, config) is None


def paged_prefill_attention_hopper(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    causal: bool = True,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
    *,
    config: HopperPrefillConfig | None = None,
) -> torch.Tensor:
    """kernels.prefill_attention.paged_prefill_attention on the Gluon Hopper kernel (same arguments and result).

    q: [num_tokens, num_heads, head_dim] bf16/fp16; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32; query_start_loc: [num_seqs + 1] int32; context_lens: [num_seqs]
    int32. Raises ValueError for inconsistent arguments and RuntimeError where the kernel cannot run
    (supports_hopper_prefill)."""
    num_seqs, num_heads, num_kv_heads, _, _ = check_prefill_args(
        q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out
    )
    reason = hopper_prefill_unsupported_reason(q, key_cache, value_cache, config)
    if reason is not None:
        raise RuntimeError(f"paged_prefill_attention_hopper: {reason}")
    return launch_hopper_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale, causal,
                                 max_query_len, out, num_seqs, num_heads, num_kv_heads, config)


def launch_hopper_prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    causal: bool,
    max_query_len: int | None,
    out: torch.Tensor | None,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    config: HopperPrefillConfig | None = None,
) -> torch.Tensor:
    """The launch itself, for callers that already checked the arguments (check_prefill_args) and that the kernel can run
    (hopper_prefill_unsupported_reason is None): paged_prefill_attention's dispatch checks once, not twice."""
    head_dim, block_size = q.shape[2], key_cache.shape[1]
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())  # one sync
    if max_query_len <= 0:
        return out
    cfg = config or default_hopper_prefill_config(head_dim, block_size)
    # q as [tokens, heads * head_dim] in [64, head_dim] boxes (one per warpgroup); each cache as [blocks * block_size,
    # kv_heads * head_dim] in [min(block_size, block_n), head_dim] boxes (one page run). q is new every step (and, in
    # eager steps, every layer): its descriptor is built each call; the caches' are memoized.
    q_desc = GluonTensorDescriptor(q, [q.shape[0], num_heads * head_dim], [q.stride(0), 1], [HALF_M, head_dim],
                                   shared_layout((HALF_M, head_dim), q.dtype))
    box_rows = min(block_size, cfg.block_n)
    k_desc, v_desc = cache_descriptor(key_cache, box_rows), cache_descriptor(value_cache, box_rows)
    n_mblocks = -(-max_query_len // BLOCK_M)
    num_items = num_heads * num_seqs * n_mblocks
    num_programs = min(num_items, sm_count(q.device))
    num_rounds = -(-num_items // num_programs)
    _prefill_hopper_kernel[(num_programs,)](
        q_desc, k_desc, v_desc, out, block_tables, query_start_loc, context_lens,
        scale * LOG2_E, out.stride(0), out.stride(1), block_tables.stride(0), num_heads, num_seqs, n_mblocks,
        num_items, num_rounds,
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_N=cfg.block_n, BOX_ROWS=box_rows,
        PAGE_SIZE=block_size, STAGES=cfg.stages, CAUSAL=bool(causal), PINGPONG=cfg.schedule == "pingpong",
        num_warps=CONSUMER_WARPS,
    )
    return out


@functools.lru_cache(maxsize=64)
def shared_layout(block_shape: tuple[int, ...], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    """The NVMMA shared-memory layout of a bf16/fp16 [rows, head_dim] tile (TMA boxes and wgmma operands)."""
    return gl.NVMMASharedLayout.get_default_for(list(block_shape), gl.bfloat16 if dtype == torch.bfloat16
                                                else gl.float16)


_CACHE_DESCRIPTORS: TensorMemo[GluonTensorDescriptor] = TensorMemo()


def cache_descriptor(cache: torch.Tensor, box_rows: int) -> GluonTensorDescriptor:
    """cache [num_blocks, block_size, kv_heads, head_dim] (a layout gluon_layout_unsupported_reason accepts) as
    [num_blocks * block_size, kv_heads * head_dim] in [box_rows, head_dim] boxes: the prefill and decode kernels'
    K/V copies. Built once per cache tensor and box (TensorMemo), since a worker's caches live as long as it does."""
    return _CACHE_DESCRIPTORS.get(cache, box_rows, lambda c: _cache_descriptor(c, box_rows))


def _cache_descriptor(cache: torch.Tensor, box_rows: int) -> GluonTensorDescriptor:
    num_blocks, block_size, num_kv_heads, head_dim = cache.shape
    return GluonTensorDescriptor(cache, [num_blocks * block_size, num_kv_heads * head_dim], [cache.stride(1), 1],
                                 [box_rows, head_dim], shared_layout((box_rows, head_dim), cache.dtype))


register_memo(default_hopper_prefill_config.cache_clear)
register_memo(shared_layout.cache_clear)
