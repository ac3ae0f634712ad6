"""The split-K FP8 GEMV against the dequantised reference: both paths (CUDA cores, tensor cores), split counts,
layer shapes, bit-identical repeats and its default plans."""

from __future__ import annotations

import pytest
import torch

from kernels._checks import FP8_DTYPE
from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.fp8_gemv import (
    GemvConfig,
    GemvPlan,
    fp8_gemv,
    fp8_gemv_ref,
    fp8_gemv_silu_and_mul,
    gated_gemv_plan,
    gemv_plan,
    split_counters,
)
from kernels.fp8_linear import FP8_PRODUCTS_BANDS, fp8_products_config
from kernels.fp8_quant import quantize_fp8_rows_ref
from tests.kernels.fp8_problems import fp8_problem

# The projections (n, k) of llama-3.1-8b and llama-3.2-1b with every dimension divided by 32, so that the
# interpreter runs them in seconds.
SCALED_LAYER_SHAPES = {
    "8b_qkv": (192, 128), "8b_o": (128, 128), "8b_gate_up": (896, 128), "8b_down": (128, 448),
    "1b_qkv": (96, 64), "1b_o": (64, 64), "1b_gate_up": (512, 64), "1b_down": (64, 256),
}
# The full projections of llama-3.1-8b (n, k).
LAYER_SHAPES_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def _reference(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return fp8_gemv_ref(x.cpu(), w.cpu(), scale.cpu(), None if b is None else b.cpu())


@pytest.mark.parametrize("m, n, k, bias", [(1, 96, 64, False), (3, 40, 200, True), (8, 64, 256, False),
                                           (13, 48, 96, True)])
def test_fp8_gemv_matches_dequantised_reference(relative_error, tolerance, device, dtype, m, n, k, bias) -> None:
    x, w, scale, b = fp8_problem(m, n, k, bias, m * n + k, device, dtype)
    out = fp8_gemv(x, w, scale, b)
    assert out.dtype == dtype and out.shape == (m, n)
    assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance


@pytest.mark.parametrize("m", [1, 2, 5, 16])
@pytest.mark.parametrize("shape", SCALED_LAYER_SHAPES)
def test_split_k_gemv_matches_the_reference_at_scaled_down_layer_shapes(relative_error, tolerance, device, dtype,
                                                                        shape, m) -> None:
    n, k = SCALED_LAYER_SHAPES[shape]
    x, w, scale, b = fp8_problem(m, n, k, m % 2 == 1, n + k + m, device, dtype)
    # K tiles of 32: 2 to 14 of them, in 4 splits (2 where K has 2 tiles).
    config = GemvConfig(block_k=32, split_k=4)
    assert gemv_plan(m, n, k, 132, config).split_k == min(4, k // 32)
    out = fp8_gemv(x, w, scale, b, config=config)
    assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance


@pytest.mark.parametrize("split_k, splits_run", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (7, 7)])
@pytest.mark.parametrize("use_dot", [False, True])
def test_split_counts_that_do_and_do_not_divide_the_k_tiles_match_the_reference(
        relative_error, tolerance, device, dtype, split_k, splits_run, use_dot) -> None:
    # K = 200 is 7 tiles of 32, the last one 8 wide; N = 77 leaves a partial output tile. 5 splits of 2 tiles
    # would leave the fifth empty, so 4 run.
    m, n, k = (4, 77, 200)
    x, w, scale, b = fp8_problem(m, n, k, split_k % 2 == 0, split_k, device, dtype)
    config = GemvConfig(block_n=16, block_k=32, split_k=split_k, use_dot=use_dot)
    plan = gemv_plan(m, n, k, 132, config)
    assert plan.split_k == splits_run and (plan.split_k - 1) * plan.k_per_split < k
    out = fp8_gemv(x, w, scale, b, config=config)
    assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance


@pytest.mark.parametrize("m, use_dot", [(1, False), (2, False), (5, False), (1, True), (3, True), (9, True),
                                        (16, True), (20, True)])
def test_cuda_core_and_tensor_core_paths_match_the_reference_at_every_row_count(
        relative_error, tolerance, device, dtype, m, use_dot) -> None:
    # CUDA cores take one row per program, tensor cores 16: past that, several M tiles, each with its counters.
    x, w, scale, b = fp8_problem(m, 72, 160, m % 3 == 0, m, device, dtype)
    out = fp8_gemv(x, w, scale, b, config=GemvConfig(block_k=32, split_k=3, use_dot=use_dot))
    assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance


@pytest.mark.parametrize("m, block_m, split_k", [(1, 0, 1), (17, 0, 3), (40, 32, 2), (64, 0, 5), (70, 64, 3)])
def test_fp8_products_match_the_reference_on_rows_rounded_to_fp8(relative_error, device, dtype, m, block_m,
                                                                 split_k) -> None:
    # The rows rounded per row as torch._scaled_mm's per-token path rounds them: then only the sums' order differs.
    x, w, scale, b = fp8_problem(m, 72, 160, m % 2 == 0, m, device, dtype)
    config = GemvConfig(fp8_products=True, block_m=block_m, block_k=32, split_k=split_k)
    plan = gemv_plan(m, 72, 160, 4, config)
    assert plan.fp8_products and plan.block_m == (block_m or min(64, max(16, 1 << (m - 1).bit_length())))
    q, x_scale = quantize_fp8_rows_ref(x.cpu().float())
    rounded = (q.float() * x_scale).to(dtype)
    out = fp8_gemv(x, w, scale, b, config=config)
    assert relative_error(out.cpu(), _reference(rounded, w, scale, b)) < 1e-2


@pytest.mark.parametrize("m", [most for most, _ in FP8_PRODUCTS_BANDS])
def test_each_fp8_products_band_config_matches_the_reference_at_its_most_rows(relative_error, device, dtype,
                                                                               m) -> None:
    x, w, scale, b = fp8_problem(m, 72, 160, True, m, device, dtype)
    q, x_scale = quantize_fp8_rows_ref(x.cpu().float())
    rounded = (q.float() * x_scale).to(dtype)
    out = fp8_gemv(x, w, scale, b, config=fp8_products_config(m))
    assert relative_error(out.cpu(), _reference(rounded, w, scale, b)) < 1e-2


@pytest.mark.parametrize("m, block_m", [(20, 32), (40, 32), (64, 64), (70, 64)])
def test_tensor_core_tiles_of_more_rows_match_the_reference(relative_error, tolerance, device, dtype, m,
                                                            block_m) -> None:
    x, w, scale, b = fp8_problem(m, 72, 160, m % 2 == 0, m, device, dtype)
    config = GemvConfig(block_m=block_m, block_k=32, split_k=3, use_dot=True)
    assert gemv_plan(m, 72, 160, 4, config).block_m == block_m
    out = fp8_gemv(x, w, scale, b, config=config)
    assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance


@pytest.mark.parametrize("m, use_dot", [(1, False), (3, False), (3, True), (16, True)])
def test_split_k_gemv_is_bit_identical_from_launch_to_launch(device, dtype, m, use_dot) -> None:
    x, w, scale, b = fp8_problem(m, 37, 224, True, 21, device, dtype)
    config = GemvConfig(block_k=32, split_k=7, use_dot=use_dot)
    first = fp8_gemv(x, w, scale, b, config=config)
    for _ in range(3):
        assert torch.equal(fp8_gemv(x, w, scale, b, config=config), first)


@pytest.mark.parametrize("k", [224, 200])  # 7 K tiles of 32 in splits of 3, 3 and 1; the last tile 8 wide at 200
@pytest.mark.parametrize("vector", [8, 16])
def test_runs_of_eight_or_sixteen_along_k_match_the_reference_over_uneven_splits(relative_error, tolerance, device,
                                                                                 dtype, k, vector) -> None:
    x, w, scale, b = fp8_problem(1, 37, k, True, k + vector, device, dtype)
    plain = fp8_gemv(x, w, scale, b, config=GemvConfig(block_k=32, split_k=3, use_dot=False, vector=vector))
    assert relative_error(plain.cpu(), _reference(x, w, scale, b)) < tolerance


def test_runs_of_sixteen_along_k_match_the_reference_at_every_split(relative_error, tolerance, device,
                                                                    dtype) -> None:
    x, w, scale, b = fp8_problem(2, 72, 160, False, 9, device, dtype)
    for split_k in (1, 2, 5):
        out = fp8_gemv(x, w, scale, b, config=GemvConfig(block_k=32, split_k=split_k, use_dot=False, vector=16))
        assert relative_error(out.cpu(), _reference(x, w, scale, b)) < tolerance, split_k


def test_vector_plans_the_cuda_core_path_only() -> None:
    cuda = gemv_plan(1, 6144, 4096, 132, GemvConfig(vector=8))
    assert (cuda.use_dot, cuda.vector) == (False, 8)
    dot = gemv_plan(8, 6144, 4096, 132, GemvConfig(vector=16))
    assert (dot.use_dot, dot.vector) == (True, 8)
    assert gemv_plan(1, 6144, 4096, 132).vector == 16
    assert gemv_plan(1, 6144, 4096, 132, GemvConfig(block_k=8)).vector == 16


def test_split_counters_are_back_to_zero_after_a_launch(device, dtype) -> None:
    x, w, scale, b = fp8_problem(5, 50, 128, False, 3, device, dtype)
    fp8_gemv(x, w, scale, b, config=GemvConfig(block_k=32, split_k=4, use_dot=False))  # 5 x 4 output tiles
    counters = split_counters(x.device, 20)
    assert counters.numel() >= 4096 and int(counters.count_nonzero()) == 0


def test_fp8_gemv_tiles_are_launch_parameters(relative_error, device, dtype) -> None:
    x, w, scale, _ = fp8_problem(2, 72, 160, False, 7, device, dtype)
    ref = _reference(x, w, scale, None)
    for cfg in (GemvConfig(block_n=4, block_k=32, use_dot=False), GemvConfig(block_n=32, block_k=64, num_warps=8),
                GemvConfig(block_n=16, block_k=16, split_k=4, num_stages=2)):
        assert relative_error(fp8_gemv(x, w, scale, config=cfg).cpu(), ref) < 1.5e-2


def test_default_plans_split_k_until_every_sm_has_about_two_four_or_eight_programs() -> None:
    sms = 132  # an H100 or H200: about 264 programs wanted for one row, 528 for two, 1056 on tensor cores
    # One row, CUDA cores: 8 weight rows x 1024 of K per iteration; the 8B's projections are then unsplit.
    assert gemv_plan(1, 6144, 4096, sms) == GemvPlan(1, 8, 1024, 1, 4096, False, 4, 3, 16)  # 768 tiles already
    assert gemv_plan(1, 4096, 14336, sms) == GemvPlan(1, 8, 1024, 1, 14336, False, 4, 3, 16)  # 512 tiles
    assert gemv_plan(1, 2048, 2048, sms) == GemvPlan(1, 8, 1024, 2, 1024, False, 4, 3, 16)  # 256 tiles x 2
    # Two rows, CUDA cores: 16 x 512.
    assert gemv_plan(2, 6144, 4096, sms) == GemvPlan(1, 16, 512, 1, 4096, False, 4, 3, 16)  # 768 tiles already
    assert gemv_plan(2, 4096, 4096, sms) == GemvPlan(1, 16, 512, 2, 2048, False, 4, 3, 16)  # 512 tiles x 2
    assert gemv_plan(2, 4096, 14336, sms) == GemvPlan(1, 16, 512, 2, 7168, False, 4, 3, 16)  # 28 K tiles: 14, 14
    # 3 to 16 rows, tensor cores: 16 x 32 x 256 tiles.
    assert gemv_plan(3, 6144, 4096, sms) == GemvPlan(16, 32, 256, 6, 768, True, 4, 3)
    assert gemv_plan(16, 4096, 4096, sms) == GemvPlan(16, 32, 256, 8, 512, True, 4, 3)  # 9 wanted, 16 K tiles
    assert gemv_plan(8, 28672, 4096, sms) == GemvPlan(16, 32, 256, 2, 2048, True, 4, 3)
    assert gemv_plan(8, 4096, 14336, sms) == GemvPlan(16, 32, 256, 8, 1792, True, 4, 3)
    # FP8 products: one tile of rows up to 64, 64 x 256 weight tiles, about 4 programs per SM.
    products = GemvConfig(fp8_products=True)
    assert gemv_plan(32, 6144, 4096, sms, products) == GemvPlan(32, 64, 256, 6, 768, True, 4, 3, 8, True)
    assert gemv_plan(20, 28672, 4096, sms, products) == GemvPlan(32, 64, 256, 2, 2048, True, 4, 3, 8, True)
    assert gemv_plan(100, 4096, 4096, sms, products).block_m == 64
    # Overrides: a fixed split, the CUDA-core path at 4 rows (a program per row and tile), K shorter than a tile.
    assert gemv_plan(1, 6144, 4096, sms, GemvConfig(split_k=1)).split_k == 1
    assert gemv_plan(4, 6144, 4096, sms, GemvConfig(use_dot=False))[:5] == (1, 16, 512, 1, 4096)
    assert gemv_plan(1, 40, 24, sms) == GemvPlan(1, 8, 32, 1, 32, False, 4, 3, 16)


@pytest.mark.parametrize("m, bias", [(1, False), (2, True)])
@pytest.mark.parametrize("shape", ["8b_gate_up", "1b_gate_up"])
def test_gate_up_gemv_with_silu_equals_the_gemv_then_silu_and_mul_bit_for_bit(
        relative_error, tolerance, device, dtype, shape, m, bias) -> None:
    n, k = SCALED_LAYER_SHAPES[shape]
    x, w, scale, b = fp8_problem(m, n, k, bias, n + m, device, dtype)
    fused = fp8_gemv_silu_and_mul(x, w, scale, b)
    assert fused.shape == (m, n // 2) and fused.dtype == dtype
    assert torch.equal(fused.cpu(), silu_and_mul(fp8_gemv(x, w, scale, b)).cpu())
    assert relative_error(fused.cpu(), silu_and_mul_ref(_reference(x, w, scale, b))) < tolerance


def test_gate_up_gemv_with_silu_runs_only_where_the_gemv_is_unsplit_on_cuda_cores() -> None:
    sms = 132
    assert gated_gemv_plan(1, 28672, 4096, sms) == gemv_plan(1, 28672, 4096, sms)  # the 8B's gate_up
    assert gated_gemv_plan(2, 16384, 2048, sms) == gemv_plan(2, 16384, 2048, sms)  # the 1B's at two rows
    assert gated_gemv_plan(1, 512, 4096, sms) is None  # 64 tiles: split 5
    assert gated_gemv_plan(3, 28672, 4096, sms) is None  # tensor cores
    assert gated_gemv_plan(1, 28671, 4096, sms) is None  # no halves
    x, w, scale, _ = fp8_problem(1, 4, 4096, False, 1, "cpu", torch.float32)  # off CUDA: planned for 4 SMs
    assert gemv_plan(1, 4, 4096, 4).split_k == 4
    with pytest.raises(ValueError, match=r"needs an even N and an unsplit CUDA-core plan for x \[1, 4096\] and "
                                         r"weight \[4, 4096\]"):
        fp8_gemv_silu_and_mul(x, w, scale)


def test_gemv_config_refuses_tiles_that_are_not_powers_of_two() -> None:
    with pytest.raises(ValueError, match=r"GemvConfig.block_k must be a power of 2 \(0: the default\), got 384"):
        GemvConfig(block_k=384)
    with pytest.raises(ValueError, match="GemvConfig fields out of range"):
        GemvConfig(split_k=-1)
    with pytest.raises(ValueError, match=r"GemvConfig.vector must be one of \(8, 16\) \(0: the default\), got 4"):
        GemvConfig(vector=4)


def test_fp8_gemv_refuses_a_weight_that_is_not_fp8() -> None:
    x = torch.randn(1, 16)
    with pytest.raises(TypeError, match=r"weight must have dtype in \(torch.float8_e4m3fn\), got torch.bfloat16"):
        fp8_gemv(x, torch.zeros(8, 16, dtype=torch.bfloat16), torch.ones(8))
    with pytest.raises(ValueError, match=r"weight_scale must have shape \(8,\), got \(4,\)"):
        fp8_gemv(x, torch.zeros(8, 16, dtype=FP8_DTYPE), torch.ones(4))


@pytest.mark.gpu
@pytest.mark.parametrize("proj", LAYER_SHAPES_8B)
def test_split_k_gemv_compiles_writes_every_output_and_repeats_bit_for_bit_at_8b_shapes(relative_error, proj) -> None:
    n, k = LAYER_SHAPES_8B[proj]
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w, scale = quantize_fp8_rows_ref(torch.randn(n, k, generator=g, device="cuda") * 0.05)  # drawn on the GPU
    scale = scale.view(-1)
    for m in (1, 2, 4, 8, 16):  # CUDA cores at 1 row, tensor cores past it
        x = torch.randn(m, k, generator=g, device="cuda").to(torch.bfloat16)
        b = torch.randn(n, generator=g, device="cuda").to(torch.bfloat16) if m == 2 else None
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        fp8_gemv(x, w, scale, b, out=out)
        assert relative_error(out.float(), fp8_gemv_ref(x, w, scale, b).float()) < 1e-2, m
        for _ in range(3):
            assert torch.equal(fp8_gemv(x, w, scale, b), out), m


@pytest.mark.gpu
def test_split_k_gemv_replayed_from_a_cuda_graph_sets_its_counters_back_each_time(relative_error) -> None:
    x, w, scale, b = fp8_problem(4, 4096, 14336, True, 5, "cuda", torch.bfloat16)
    fp8_gemv(x, w, scale, b)  # compiles and allocates the counters outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_gemv(x, w, scale, b)
    for scale_x in (3.0, -0.5):
        fresh = torch.randn_like(x) * scale_x
        x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, fp8_gemv(fresh, w, scale, b))
        assert relative_error(out.float().cpu(), _reference(fresh, w, scale, b).float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("proj", ["qkv", "down"])
@pytest.mark.parametrize("vector", [8, 16])
def test_runs_of_eight_or_sixteen_compile_and_match_the_reference_at_8b_shapes(relative_error, proj, vector) -> None:
    n, k = LAYER_SHAPES_8B[proj]
    g = torch.Generator(device="cuda").manual_seed(n + vector)
    w, scale = quantize_fp8_rows_ref(torch.randn(n, k, generator=g, device="cuda") * 0.05)  # drawn on the GPU
    scale = scale.view(-1)
    x = torch.randn(1, k, generator=g, device="cuda").to(torch.bfloat16)
    plain = fp8_gemv(x, w, scale, config=GemvConfig(use_dot=False, vector=vector))
    assert relative_error(plain.float(), fp8_gemv_ref(x, w, scale).float()) < 1e-2
