"""The FP8 linear layer on a GPU: the split-K GEMV for a few rows, FP8 tensor-core GEMMs for more.

Few rows (decode of a small batch): `fp8_gemv` reads each FP8 weight once, split along K so that every SM streams
weights, widens them in registers and multiplies on CUDA cores (one row) or tensor cores (more); the step is bound
by those bytes. More rows (prefill, large decode batches): the step turns compute-bound, so the activations are
quantised per token (`quantize_fp8_rows`) and multiplied on FP8 tensor cores by `torch._scaled_mm` with row-wise
scales (scale_a [M, 1] for x, scale_b [1, N] for the weight, both fp32 and contiguous, output in bf16); a weight
whose dimensions _scaled_mm refuses takes the dequantising tensor-core kernel `fp8_dequant_mm`. Devices without FP8
tensor cores (before sm_89) run the dequantised reference. Where a kernel's tiles fail to compile on this device,
the other Triton kernel serves that shape.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.fp8_dequant_mm import DequantMMConfig, dequant_mm_tiles, fp8_dequant_mm
from kernels.fp8_gemv import (
    GemvConfig,
    check_fp8_linear_args,
    fp8_gemv,
    fp8_gemv_ref,
    fp8_gemv_silu_and_mul,
    gated_gemv_plan,
    gemv_plan,
    num_sms,
)
from kernels.fp8_quant import quantize_fp8_rows, quantize_fp8_rows_ref

log = logging.getLogger(__name__)

# At most this many rows go through the split-K GEMV; more take the tensor-core GEMM (`bench/fp8.py --sweep-rows`
# times both at several row counts).
GEMV_MAX_ROWS = 16
# Past GEMV_MAX_ROWS, the split-K kernel on FP8 products (x rounded per row as _scaled_mm rounds it) instead of
# _scaled_mm, on CUDA, in bands of rows: (most rows, config), each config the one whose sum over an 8B layer's four
# projections was least at those rows on the H200 (bench/fp8_products_sweep.py; 32 rows: bench/fp8.py). From 33
# rows the tiles are a Hopper FP8 wgmma's 64 rows high; their shared-memory stages fit few programs on an SM, so one
# program per SM's worth of tiles and splits (fewer splits, fewer fp32 partials) beats more. Past the last band
# _scaled_mm was as fast or faster.
FP8_PRODUCTS_BANDS: tuple[tuple[int, GemvConfig], ...] = (
    (32, GemvConfig(fp8_products=True)),
    (64, GemvConfig(fp8_products=True, block_n=64, block_k=256, num_stages=3, num_warps=4, programs_per_sm=1)),
    (128, GemvConfig(fp8_products=True, block_n=128, block_k=128, num_stages=4, num_warps=8, programs_per_sm=1)),
    (192, GemvConfig(fp8_products=True, block_n=128, block_k=128, num_stages=4, num_warps=4, programs_per_sm=1)),
)
FP8_PRODUCTS_MAX_ROWS = FP8_PRODUCTS_BANDS[-1][0]
# A gated MLP's gate/up projection and its SiLU-and-mul in one launch (fp8_gemv_silu_and_mul) wherever the GEMV
# runs unsplit on CUDA cores: a decode step of one or two rows then runs one short kernel fewer per layer.
GATED_GEMV = True


def fp8_products_config(rows: int) -> GemvConfig:
    """The FP8-products config of the band that holds `rows` (the last band's past it)."""
    for most, config in FP8_PRODUCTS_BANDS:
        if rows <= most:
            return config
    return FP8_PRODUCTS_BANDS[-1][1]


def _fp8_products_gemv(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return fp8_gemv(x, weight, weight_scale, bias, config=fp8_products_config(x.shape[0]))


# Launches by (kernel, tiles, dtype, K, bias): True once one ran, False once one failed to compile (the other
# Triton kernel then serves that shape in this process).
_compiled_tiles: dict[tuple, bool] = {}


@functools.cache
def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def has_fp8_tensor_cores(device: torch.device) -> bool:
    """sm_89 (Ada) and later multiply float8_e4m3fn on tensor cores (and Triton converts it in registers)."""
    capability = _capability(device)
    return capability is not None and capability >= (8, 9)


def fp8_scaled_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] → [M, N] in x's dtype via per-token FP8 activations and torch._scaled_mm (CUDA, sm_89+)."""
    check_fp8_linear_args(x, weight, weight_scale, bias)
    q, x_scale = quantize_fp8_rows(x)  # [M, K] fp8, [M, 1] fp32
    # weight [N, K] row-major is the column-major [K, N] operand _scaled_mm asks for; row-wise scaling needs a
    # bf16 output, so an fp16 model converts after.
    y = torch._scaled_mm(q, weight.t(), scale_a=x_scale, scale_b=weight_scale.view(1, -1), out_dtype=torch.bfloat16)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def fp8_linear_path(rows: int, n: int, k: int, capability: tuple[int, int] | None) -> str:
    """Which implementation fp8_linear runs for x [rows, k] and weight [n, k]: "gemv", "fp8_products", "dequant_mm",
    "scaled_mm" or "reference". capability: the CUDA device's (major, minor), None off CUDA (the interpreter runs the
    Triton kernels for any rows). Decided by shapes alone, so a captured CUDA graph keeps the path it was captured
    with."""
    if capability is not None and capability < (8, 9):
        return "reference"  # no FP8 tensor cores, and Triton cannot convert float8_e4m3fn there
    if rows <= GEMV_MAX_ROWS:
        return "gemv"
    # _scaled_mm needs both dimensions of the weight divisible by 16; the dequantising kernel takes any.
    if capability is None or n % 16 or k % 16:
        return "dequant_mm"
    return "fp8_products" if rows <= FP8_PRODUCTS_MAX_ROWS else "scaled_mm"


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] · (weight [N, K] float8_e4m3fn · weight_scale [N])ᵀ + bias → [..., N] in x's dtype. No host sync
    and no shape that depends on values: it can be captured in a CUDA graph (after one call outside it)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    path = fp8_linear_path(x2.shape[0], weight.shape[0], x2.shape[1], _capability(x2.device))
    if path == "reference":
        y = fp8_gemv_ref(x2, weight, weight_scale, bias)
    elif path == "scaled_mm":
        y = fp8_scaled_mm(x2, weight, weight_scale, bias)
    elif x2.device.type != "cuda":
        y = (fp8_gemv if path == "gemv" else fp8_dequant_mm)(x2, weight, weight_scale, bias)
    else:
        y = _compiled_or_other(path, x2, weight, weight_scale, bias)
    return y.view(*lead, weight.shape[0])


def _compiled_or_other(
    path: str, x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The kernel of `path` ("gemv", "fp8_products" or "dequant_mm"), or another one for tiles that Triton failed
    to compile on this device (said once)."""
    m, n, k = check_fp8_linear_args(x, weight, weight_scale, bias)
    if path == "gemv":
        tiles, kernel, other = gemv_plan(m, n, k, num_sms(x.device), GemvConfig()), fp8_gemv, fp8_dequant_mm
    elif path == "fp8_products":
        tiles = gemv_plan(m, n, k, num_sms(x.device), fp8_products_config(m))
        kernel, other = _fp8_products_gemv, fp8_scaled_mm
    else:
        tiles, kernel, other = dequant_mm_tiles(m, n, k, DequantMMConfig()), fp8_dequant_mm, fp8_gemv
    return _once_compiled_or_other(f"{path} tiles {tiles}", (path, tiles, x.dtype, k, bias is None), kernel, other,
                                   x, weight, weight_scale, bias)


def _once_compiled_or_other(
    what: str, key: tuple, kernel: Callable[..., torch.Tensor], other: Callable[..., torch.Tensor], x: torch.Tensor,
    weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """kernel(x, weight, weight_scale, bias), whose first launch of the tiles named by `key` compiles them; where
    that failed on this device (said once), other(...) instead, then and at every later call."""
    compiled = _compiled_tiles.get(key)
    if compiled is False:
        return other(x, weight, weight_scale, bias)
    if compiled:
        return kernel(x, weight, weight_scale, bias)
    try:
        y = kernel(x, weight, weight_scale, bias)
    except Exception as exc:  # noqa: BLE001 - compile failures surface as several exception types
        first_line = (str(exc).splitlines() or [""])[0][:200]
        log.warning("%s for %s x %s do not compile here (%s: %s); %s serves them", what, tuple(x.shape),
                    tuple(weight.shape), type(exc).__name__, first_line, other.__name__)
        _compiled_tiles[key] = False
        return other(x, weight, weight_scale, bias)
    _compiled_tiles[key] = True
    return y


def _silu_and_mul_of_fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return silu_and_mul(fp8_linear(x, weight, weight_scale, bias))


def fp8_linear_silu_and_mul(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """silu_and_mul(fp8_linear(x, weight, weight_scale, bias)) for x [..., K] and a gate/up weight [2D, K] (gate
    rows first) → [..., D], bit for bit; one launch where the GEMV's plan allows it (GATED_GEMV)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    m, n, k = check_fp8_linear_args(x2, weight, weight_scale, bias)
    plan = None
    if GATED_GEMV and fp8_linear_path(m, n, k, _capability(x2.device)) == "gemv":
        plan = gated_gemv_plan(m, n, k, num_sms(x2.device))
    if plan is None:
        y = _silu_and_mul_of_fp8_linear(x2, weight, weight_scale, bias)
    else:
        y = _once_compiled_or_other(f"gated GEMV tiles {plan}", ("gated", plan, x2.dtype, k, bias is None),
                                    fp8_gemv_silu_and_mul, _silu_and_mul_of_fp8_linear, x2, weight, weight_scale, bias)
    return y.view(*lead, n // 2)


def fp8_linear_silu_and_mul_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None, *,
    capability: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Plain torch version of fp8_linear_silu_and_mul (see fp8_linear_ref)."""
    y = fp8_linear_ref(x, weight, weight_scale, bias, capability=capability)
    return silu_and_mul_ref(y.reshape(-1, y.shape[-1])).view(*y.shape[:-1], y.shape[-1] // 2)


def fp8_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    capability: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Plain torch version of fp8_linear: the dequantised reference (what the model runs on CPU). Given a CUDA
    capability, rows that fp8_linear sends to the tensor-core path there are first rounded to FP8 per token, as
    that path rounds them."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if fp8_linear_path(x2.shape[0], weight.shape[0], x2.shape[1], capability) in ("scaled_mm", "fp8_products"):
        q, x_scale = quantize_fp8_rows_ref(x2)
        x2 = (q.float() * x_scale).to(x.dtype)
    y = fp8_gemv_ref(x2, weight, weight_scale, bias)
    return y.view(*lead, weight.shape[0])
