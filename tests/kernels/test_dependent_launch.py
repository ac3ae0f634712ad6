"""When the small kernels launch as programmatic dependents (kernels/dependent_launch.py)."""

import pytest
import torch

import kernels.dependent_launch as dl

pytestmark = pytest.mark.timeout(30)


def test_no_dependent_launch_off_cuda_or_when_not_asked() -> None:
    assert dl.supports_pdl(True, torch.device("cpu")) is False
    assert dl.supports_pdl(False, torch.device("cpu")) is False
    assert dl.dependent_launch(torch.device("cpu")) is False


def test_a_dependent_launch_passes_launch_pdl_and_an_ordinary_one_nothing() -> None:
    assert dl.launch_options(True) == {"launch_pdl": True}
    assert dl.launch_options(False) == {}


def test_turning_dependent_launches_off_holds_on_any_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "ENABLED", False)
    assert dl.dependent_launch(torch.device("cuda", 0)) is False
