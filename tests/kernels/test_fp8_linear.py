"""FP8 linear kernels (row-wise quantisation, the small-batch split-K GEMV, the tensor-core paths) against their
references, and the dispatch between them."""

from __future__ import annotations

import pytest
import torch

from kernels._checks import FP8_DTYPE
from kernels.fp8_dequant_mm import DequantMMConfig, dequant_mm_tiles, fp8_dequant_mm
import kernels.fp8_linear
from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.fp8_gemv import fp8_gemv, fp8_gemv_ref, gated_gemv_plan
from kernels.fp8_linear import (
    FP8_PRODUCTS_BANDS,
    FP8_PRODUCTS_MAX_ROWS,
    GEMV_MAX_ROWS,
    fp8_linear,
    fp8_linear_path,
    fp8_linear_ref,
    fp8_linear_silu_and_mul,
    fp8_linear_silu_and_mul_ref,
    fp8_products_config,
    fp8_scaled_mm,
)
from kernels.fp8_quant import quantize_fp8_rows, quantize_fp8_rows_ref
from tests.kernels.fp8_problems import fp8_problem, fp8_weights


def test_quantize_rows_reference_scales_each_row_to_the_fp8_range() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [448.0, 896.0, -1792.0, 3.5]])
    q, scale = quantize_fp8_rows_ref(x)
    assert q.dtype == FP8_DTYPE
    assert scale.view(-1).tolist() == pytest.approx([2.0 / 448.0, 1e-12 / 448.0, 1792.0 / 448.0], rel=1e-6)
    assert q.float()[0].tolist() == [224.0, -448.0, 112.0, 0.0]
    assert q.float()[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert q.float()[2].tolist() == [112.0, 224.0, -448.0, 0.875]


@pytest.mark.parametrize("rows, cols", [(1, 64), (5, 200), (3, 4100)])
def test_quantize_rows_kernel_matches_reference(device, dtype, rows, cols) -> None:
    g = torch.Generator().manual_seed(cols)
    x = (torch.randn(rows, cols, generator=g) * 3).to(dtype)
    q, scale = quantize_fp8_rows(x.to(device), block_k=1024)
    ref_q, ref_scale = quantize_fp8_rows_ref(x)
    assert torch.allclose(scale.cpu(), ref_scale, rtol=1e-6, atol=0)
    mismatched = (q.cpu().float() != ref_q.float()).float().mean().item()
    if device == "cpu":
        assert mismatched == 0.0
    else:  # the GPU divides with 2-ulp accuracy: a value on a rounding boundary may land one fp8 step away
        assert mismatched < 1e-3


def test_fp8_linear_keeps_leading_dimensions_and_matches_reference(relative_error, device, dtype) -> None:
    g = torch.Generator().manual_seed(3)
    w, scale = fp8_weights(32, 64, g, device)
    x = torch.randn(2, 3, 64, generator=g).to(dtype).to(device)
    out = fp8_linear(x, w, scale)
    assert out.shape == (2, 3, 32)
    assert relative_error(out.cpu(), fp8_linear_ref(x.cpu(), w.cpu(), scale.cpu())) < 1.5e-2


@pytest.mark.parametrize("m, n, k, bias", [(1, 96, 64, False), (5, 40, 200, True), (16, 64, 256, False),
                                           (70, 48, 96, True)])
def test_fp8_dequant_mm_matches_dequantised_reference(relative_error, tolerance, device, dtype, m, n, k, bias) -> None:
    # K not a multiple of the tile (200, 96), N not a multiple of 16 (40), rows past one 64-row tile (70).
    x, w, scale, b = fp8_problem(m, n, k, bias, m * n + k + 1, device, dtype)
    config = DequantMMConfig(block_k=64) if device == "cpu" else None
    out = fp8_dequant_mm(x, w, scale, b, config=config)
    ref = fp8_gemv_ref(x.cpu(), w.cpu(), scale.cpu(), None if b is None else b.cpu())
    assert out.dtype == dtype and out.shape == (m, n)
    assert relative_error(out.cpu(), ref) < tolerance


def test_fp8_dequant_mm_tiles_are_launch_parameters(relative_error, device, dtype) -> None:
    g = torch.Generator().manual_seed(8)
    w, scale = fp8_weights(80, 160, g, device)
    x = torch.randn(3, 160, generator=g).to(dtype).to(device)
    ref = fp8_gemv_ref(x.cpu(), w.cpu(), scale.cpu())
    for cfg in (DequantMMConfig(block_n=16, block_k=32, num_stages=2), DequantMMConfig(block_n=64, block_k=128)):
        assert relative_error(fp8_dequant_mm(x, w, scale, config=cfg).cpu(), ref) < 1.5e-2


def test_dequant_mm_default_tiles_follow_rows_and_output_width() -> None:
    cfg = DequantMMConfig()  # about 264 programs wanted
    assert dequant_mm_tiles(1, 28672, 4096, cfg) == (16, 64, 256, 4)  # 448 programs of 64 channels
    assert dequant_mm_tiles(1, 6144, 4096, cfg) == (16, 16, 512, 4)  # 96 of 64 or 192 of 32 are too few
    assert dequant_mm_tiles(8, 4096, 14336, cfg) == (16, 16, 512, 4)
    assert dequant_mm_tiles(40, 28672, 4096, cfg) == (64, 64, 256, 3)
    assert dequant_mm_tiles(1, 40, 24, cfg) == (16, 16, 32, 4)  # K tiles no longer than K (rounded to a power of 2)


def test_rows_past_the_gemv_up_to_the_fp8_products_limit_take_fp8_products_on_cuda_only(monkeypatch) -> None:
    import kernels.fp8_linear

    monkeypatch.setattr(kernels.fp8_linear, "FP8_PRODUCTS_MAX_ROWS", 64)
    hopper = (9, 0)
    assert fp8_linear_path(GEMV_MAX_ROWS, 4096, 4096, hopper) == "gemv"
    assert fp8_linear_path(GEMV_MAX_ROWS + 1, 4096, 4096, hopper) == "fp8_products"
    assert fp8_linear_path(64, 4096, 4096, hopper) == "fp8_products"
    assert fp8_linear_path(65, 4096, 4096, hopper) == "scaled_mm"
    assert fp8_linear_path(32, 4096, 4096, None) == "dequant_mm"


def test_fp8_products_config_is_the_band_that_holds_the_rows() -> None:
    (most_a, a), (most_b, b), (most_c, c), (most_d, d) = FP8_PRODUCTS_BANDS
    assert (most_a, most_b, most_c, most_d) == (32, 64, 128, 192) and most_d == FP8_PRODUCTS_MAX_ROWS
    assert [fp8_products_config(rows) for rows in (17, 32, 33, 64, 65, 128, 129, 192, 300)] == [a, a, b, b, c, c, d,
                                                                                             d, d]
    assert (b.block_n, b.block_k, b.num_warps, b.programs_per_sm) == (64, 256, 4, 1)
    assert (c.block_n, c.block_k, c.num_stages, c.num_warps) == (128, 128, 4, 8)


def test_fp8_linear_path_follows_rows_shape_and_device() -> None:
    hopper = (9, 0)
    assert fp8_linear_path(1, 4096, 4096, hopper) == "gemv"
    assert fp8_linear_path(GEMV_MAX_ROWS, 4096, 4096, hopper) == "gemv"
    assert fp8_linear_path(GEMV_MAX_ROWS + 1, 4096, 4096, hopper) == "fp8_products"
    assert fp8_linear_path(FP8_PRODUCTS_MAX_ROWS + 1, 4096, 4096, hopper) == "scaled_mm"
    assert fp8_linear_path(2048, 6144, 4096, (8, 9)) == "scaled_mm"
    # _scaled_mm needs weight dimensions divisible by 16; the dequantising kernel takes any, the GEMV too.
    assert fp8_linear_path(64, 40, 4096, hopper) == "dequant_mm"
    assert fp8_linear_path(64, 4096, 200, hopper) == "dequant_mm"
    assert fp8_linear_path(4, 40, 200, hopper) == "gemv"
    assert fp8_linear_path(64, 4096, 4096, (8, 0)) == "reference"  # no FP8 conversion before sm_89
    assert fp8_linear_path(1, 4096, 4096, (7, 5)) == "reference"
    assert fp8_linear_path(GEMV_MAX_ROWS, 4096, 4096, None) == "gemv"  # off CUDA: the interpreted kernels
    assert fp8_linear_path(1000, 4096, 4096, None) == "dequant_mm"


def test_fp8_linear_runs_the_split_k_gemv_up_to_its_row_limit_and_the_dequantising_kernel_past_it(device,
                                                                                                 dtype) -> None:
    x, w, scale, b = fp8_problem(GEMV_MAX_ROWS + 1, 48, 96, True, 5, device, dtype)
    for rows in (1, 7, GEMV_MAX_ROWS):
        assert torch.equal(fp8_linear(x[:rows], w, scale, b), fp8_gemv(x[:rows], w, scale, b))
    if device == "cpu":  # on CUDA these rows take _scaled_mm
        assert torch.equal(fp8_linear(x, w, scale, b), fp8_dequant_mm(x, w, scale, b))


@pytest.mark.parametrize("rows", [1, 2, 3, 20])
def test_gated_fp8_linear_equals_the_projection_then_silu_and_mul_with_and_without_fusion(
        monkeypatch, relative_error, tolerance, device, dtype, rows) -> None:
    # A 1B gate/up scaled down by 32: one launch at 1 and 2 rows (unsplit CUDA-core plans), two from 3 rows (tensor
    # cores), and past GEMV_MAX_ROWS the dequantising kernel off CUDA.
    assert (gated_gemv_plan(rows, 512, 64, 4) is not None) == (rows <= 2)
    x, w, scale, _ = fp8_problem(rows, 512, 64, False, rows, device, dtype)
    unfused = silu_and_mul(fp8_linear(x, w, scale))
    x = x.view(1, rows, 64)
    assert torch.equal(fp8_linear_silu_and_mul(x, w, scale).cpu(), unfused.view(1, rows, 256).cpu())
    monkeypatch.setattr(kernels.fp8_linear, "GATED_GEMV", False)
    assert torch.equal(fp8_linear_silu_and_mul(x, w, scale).cpu(), unfused.view(1, rows, 256).cpu())
    capability = torch.cuda.get_device_capability() if device == "cuda" else None  # the rounding of its paths
    ref = fp8_linear_silu_and_mul_ref(x.cpu(), w.cpu(), scale.cpu(), capability=capability)
    assert ref.shape == (1, rows, 256)
    assert torch.equal(ref[0], silu_and_mul_ref(fp8_linear_ref(x[0].cpu(), w.cpu(), scale.cpu(),
                                                               capability=capability)))
    assert relative_error(unfused.cpu(), ref[0]) < tolerance


def test_fp8_linear_reference_rounds_activations_where_the_gpu_takes_the_tensor_core_path() -> None:
    g = torch.Generator().manual_seed(9)
    w, scale = fp8_weights(32, 64, g, "cpu")
    x = torch.randn(GEMV_MAX_ROWS + 4, 64, generator=g)
    plain = fp8_linear_ref(x, w, scale)
    q, x_scale = quantize_fp8_rows_ref(x)
    rounded = fp8_gemv_ref(q.float() * x_scale, w, scale)
    assert torch.equal(fp8_linear_ref(x, w, scale, capability=(9, 0)), rounded)
    assert not torch.equal(rounded, plain)
    assert torch.equal(fp8_linear_ref(x, w, scale, capability=(8, 0)), plain)  # the reference path there
    assert torch.equal(fp8_linear_ref(x[:4], w, scale, capability=(9, 0)), plain[:4])  # the dequantising kernel


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 16, 64])
@pytest.mark.parametrize("n, k", [(6144, 4096), (4096, 14336), (28672, 4096)])
def test_fp8_dequant_mm_compiles_and_matches_at_8b_shapes(relative_error, m, n, k) -> None:
    """Called directly (fp8_linear would fall back to the GEMV for tiles that do not compile)."""
    g = torch.Generator().manual_seed(m + n)
    w, scale = fp8_weights(n, k, g, "cuda")
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    out = fp8_dequant_mm(x, w, scale)
    assert relative_error(out.float().cpu(), fp8_gemv_ref(x.cpu(), w.cpu(), scale.cpu()).float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, GEMV_MAX_ROWS + 1, 256])
def test_fp8_linear_captured_in_a_cuda_graph_replays_on_new_inputs(relative_error, m) -> None:
    # The per-token activation quantisation and the tensor-core GEMM (or the split-K GEMV) run inside the graph:
    # no host sync, no shape that depends on values. A replay on new rows gives what an eager call gives.
    g = torch.Generator().manual_seed(11)
    w, scale = fp8_weights(1024, 512, g, "cuda")
    bias = torch.randn(1024, generator=g).to(torch.bfloat16).cuda()
    x = torch.randn(m, 512, generator=g).to(torch.bfloat16).cuda()
    fp8_linear(x, w, scale, bias)  # compiles and settles the allocator outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_linear(x, w, scale, bias)
    fresh = torch.randn(m, 512, generator=g).to(torch.bfloat16).cuda() * 7
    x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    eager = fp8_linear(fresh, w, scale, bias)
    assert relative_error(out.float().cpu(), eager.float().cpu()) < 1e-3
    assert relative_error(out.float().cpu(), fp8_linear_ref(fresh.cpu(), w.cpu(), scale.cpu(), bias.cpu())) < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("m", [GEMV_MAX_ROWS + 1, 64, 1000])
def test_scaled_mm_path_with_per_token_scales_stays_near_the_dequantised_reference(relative_error, m) -> None:
    g = torch.Generator().manual_seed(m)
    w, scale = fp8_weights(512, 1024, g, "cuda")
    x = torch.randn(m, 1024, generator=g).to(torch.bfloat16).cuda()
    x[0] *= 100  # one outlier token must not cost the others their precision (per-token scales)
    bias = torch.randn(512, generator=g).to(torch.bfloat16).cuda()
    ref = fp8_linear_ref(x.cpu(), w.cpu(), scale.cpu(), bias.cpu())
    out = fp8_scaled_mm(x, w, scale, bias)
    assert out.dtype == torch.bfloat16
    # x is rounded to fp8 too (3 mantissa bits): about 2-3% relative error per row.
    for row in (0, 1, m - 1):
        assert relative_error(out[row].cpu(), ref[row]) < 0.05
    assert relative_error(fp8_linear(x, w, scale, bias).cpu(), ref) < 0.05
