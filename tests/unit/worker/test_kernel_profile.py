import json

import pytest
import torch

from services.common.errors import InvalidArgument
from services.worker.kernel_profile import KernelProfile
from services.worker.server import build_config


def test_the_profile_window_opens_after_start_steps_and_writes_its_summary_after_count_more(tmp_path):
    profile = KernelProfile(str(tmp_path), start=2, count=3)
    x = torch.ones(64, 64)
    for _ in range(2):
        profile.after_step()
    assert profile._prof is not None and not profile.done
    for _ in range(3):
        x = x @ x / 64
        profile.after_step()
    assert profile.done
    summary = json.loads((tmp_path / "worker_kernels.json").read_text())
    assert summary["steps"] == 3
    assert summary["wall_s"] > 0
    assert (tmp_path / "worker_kernels.txt").read_text().startswith("3 steps in ")
    profile.after_step()  # a closed window stays closed
    assert profile.num_steps == 5


def test_the_worker_flags_set_the_kernel_profile_window():
    config = build_config(["--model", "m", "--kernel-profile-dir", "out", "--kernel-profile-steps", "10:4"])
    assert (config.kernel_profile_dir, config.kernel_profile_steps) == ("out", (10, 4))


@pytest.mark.parametrize("window", ["10", "a:b", "5:0", "-1:3"])
def test_a_malformed_kernel_profile_window_is_refused(window):
    with pytest.raises(InvalidArgument, match="START:COUNT"):
        build_config(["--model", "m", f"--kernel-profile-steps={window}"])
