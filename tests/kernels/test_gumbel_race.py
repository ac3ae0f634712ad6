"""Gumbel race kernel: the same token per draw as the torch reference (same noise, same first-index argmax)."""

from __future__ import annotations

import pytest
import torch

from kernels.gumbel_race import gumbel_noise_ref, gumbel_race, gumbel_race_ref


def random_keys(num: int, seed: int) -> torch.Tensor:
    """[num, 2] int64 keys spread over [0, 2**32), the extremes included."""
    keys = torch.randint(0, 2**32, (num, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    keys[0] = torch.tensor([0, 2**32 - 1])
    return keys


def masked_logits(num_rows: int, n: int, seed: int) -> torch.Tensor:
    """[num_rows, n] fp32 logits with about a third of the entries -inf (what truncation leaves)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, n, generator=g) * 3
    return x.masked_fill_(torch.rand(num_rows, n, generator=g) < 0.3, float("-inf"))


@pytest.mark.parametrize("num_rows, n, chunk", [(6, 5000, 1024), (3, 17, 4096), (4, 4096, 4096), (5, 3001, 512)])
def test_gumbel_race_draws_the_reference_tokens_on_masked_random_logits(
    device: str, dtype: torch.dtype, num_rows: int, n: int, chunk: int
) -> None:
    x = masked_logits(num_rows, n, seed=n).to(dtype)
    keys = random_keys(num_rows, seed=n)
    want = gumbel_race_ref(x, keys)
    got = gumbel_race(x.to(device), keys.to(device), chunk=chunk)
    assert got.cpu().tolist() == want.tolist()
    # Different keys give different draws on the same row (a uniform row of 5000 tokens: 6 equal draws by chance
    # have probability 5000**-5).
    if n == 5000:
        flat = torch.zeros(num_rows, n, dtype=dtype)
        assert len(set(gumbel_race(flat.to(device), keys.to(device), chunk=chunk).cpu().tolist())) > 1


def test_gumbel_race_on_a_subset_of_rows_draws_what_it_draws_on_those_rows_alone(
    device: str, dtype: torch.dtype
) -> None:
    x = masked_logits(7, 2000, seed=5).to(dtype)
    rows = torch.tensor([6, 0, 3, 3])  # any order, a row twice (with two keys)
    keys = random_keys(4, seed=6)
    want = gumbel_race_ref(x.index_select(0, rows), keys)
    assert gumbel_race_ref(x, keys, rows).tolist() == want.tolist()
    assert gumbel_race(x.to(device), keys.to(device), rows.to(device), chunk=512).cpu().tolist() == want.tolist()


def test_gumbel_race_takes_the_first_index_of_ties_like_torch_argmax(device: str, dtype: torch.dtype) -> None:
    # 2**30 plus any noise (|g| < 23) rounds back to 2**30 in fp32 (spacing 128): tokens given it tie exactly,
    # far above every other score. fp16 cannot hold 2**30: there they tie at +inf.
    top = float("inf") if dtype == torch.float16 else 2.0**30
    n = 3000
    x = torch.zeros(5, n)
    x[0, [2999, 1100, 1030]] = top  # ties in the third and second chunks: the smallest index wins
    x[1, [1023, 1024]] = top  # a tie across a chunk boundary
    x[2] = float("-inf")  # nothing can be drawn: index 0, as torch.argmax answers
    x[3, [10, 2000]] = float("inf")
    x[4, [2500, 700]] = float("nan")  # the first NaN, as torch.argmax
    x[4, 5] = float("inf")
    x = x.to(dtype)
    keys = random_keys(5, seed=7)
    want = gumbel_race_ref(x, keys)
    assert want.tolist() == [1030, 1023, 0, 10, 700]
    assert gumbel_race(x.to(device), keys.to(device), chunk=1024).cpu().tolist() == want.tolist()


def test_gumbel_noise_of_a_key_is_fixed_and_in_the_hash_s_range() -> None:
    noise = gumbel_noise_ref(torch.tensor([[12345, 67890]]), 100000)[0]
    # u lies in [2**-33, 1 - 2**-33], so g = -log(-log(u)) within [-log(33 ln 2), 33 ln 2] = [-3.14, 22.88].
    assert -3.14 < noise.min().item() < -1.0 and 5.0 < noise.max().item() < 22.88
    assert torch.equal(noise, gumbel_noise_ref(torch.tensor([[12345, 67890]]), 100000)[0])
    # Gumbel(0, 1): mean is Euler's constant, variance pi**2 / 6.
    assert noise.double().mean().item() == pytest.approx(0.5772, abs=0.02)
    assert noise.double().var().item() == pytest.approx(1.6449, abs=0.05)


def test_gumbel_race_checks_its_arguments() -> None:
    x = torch.zeros(3, 10)
    keys = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="one pair per row of x"):
        gumbel_race_ref(x, keys[:2])
    with pytest.raises(ValueError, match=r"keys must be \[num_draws, 2\]"):
        gumbel_race_ref(x, torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="keys must have dtype"):
        gumbel_race_ref(x, keys.to(torch.int32))
    with pytest.raises(ValueError, match="rows must be"):
        gumbel_race_ref(x, keys, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one column"):
        gumbel_race_ref(torch.zeros(3, 0), keys)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        gumbel_race(x, keys, chunk=1000)
    out = torch.full((3,), -1, dtype=torch.int64)
    assert gumbel_race_ref(x, keys, out=out) is out and out.tolist() == gumbel_race_ref(x, keys).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_race_on_cuda_at_64_rows_of_a_llama3_vocabulary_draws_the_cpu_and_cuda_reference_tokens(
    dtype: torch.dtype,
) -> None:
    x = masked_logits(72, 128256, seed=11).to(dtype)
    x[5, [0, 128255]] = float("inf")
    rows = torch.arange(72).flip(0)[:64]  # 64 draws on a subset, in reverse order
    keys = random_keys(64, seed=12)
    on_cpu = gumbel_race_ref(x, keys, rows).tolist()
    cx, ckeys, crows = x.cuda(), keys.cuda(), rows.cuda()
    assert gumbel_race_ref(cx, ckeys, crows).tolist() == on_cpu
    assert gumbel_race(cx, ckeys, crows).tolist() == on_cpu
    assert gumbel_race(cx[:64], ckeys).tolist() == gumbel_race_ref(x[:64], keys).tolist()
