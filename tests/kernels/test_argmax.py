"""Row-wise argmax kernel: the same index as torch.argmax, ties and NaN included."""

from __future__ import annotations

import pytest
import torch

from kernels.argmax import argmax_rows, argmax_rows_ref


@pytest.mark.parametrize("num_rows, n", [(1, 128256), (3, 5000), (4, 17), (2, 4096)])
def test_argmax_rows_equals_torch_argmax_on_random_rows(device: str, dtype: torch.dtype, num_rows: int, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(num_rows, n, generator=g).to(dtype).to(device)
    assert torch.equal(argmax_rows(x).cpu(), torch.argmax(x.cpu(), dim=-1))


def test_argmax_rows_takes_the_first_index_of_ties_across_chunks(device: str, dtype: torch.dtype) -> None:
    x = torch.zeros(4, 9000)
    x[0, [8999, 4100, 4097]] = 7.0  # ties in the second and third chunks: the smallest index wins
    x[1, [4095, 4096]] = 3.0  # a tie across the first chunk boundary
    x[2] = float("-inf")  # nothing finite: index 0, as torch answers
    x[3, [10, 5000]] = float("inf")
    x = x.to(dtype).to(device)
    out = argmax_rows(x)
    assert out.cpu().tolist() == [4097, 4095, 0, 10]
    assert torch.equal(out.cpu(), torch.argmax(x.cpu(), dim=-1))


def test_argmax_rows_answers_the_first_nan_like_torch(device: str, dtype: torch.dtype) -> None:
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3))
    x[0, [5000, 4500]] = float("nan")
    x[0, 10] = float("inf")
    x = x.to(dtype).to(device)
    assert argmax_rows(x).cpu().tolist()[0] == 4500
    assert torch.equal(argmax_rows(x).cpu(), torch.argmax(x.cpu(), dim=-1))


def test_argmax_rows_writes_into_a_given_output_and_checks_it() -> None:
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(4))
    out = torch.full((3,), -1, dtype=torch.int64)
    assert argmax_rows_ref(x, out) is out
    assert out.tolist() == torch.argmax(x, dim=-1).tolist()
    with pytest.raises(ValueError, match="out must be"):
        argmax_rows(x, torch.empty(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="out must have dtype"):
        argmax_rows(x, torch.empty(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least one column"):
        argmax_rows(torch.empty(2, 0))
