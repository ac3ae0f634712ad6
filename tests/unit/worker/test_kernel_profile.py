import json

import pytest
import torch

from services.common.errors import InvalidArgument
from services.worker.kernel_profile import KernelProfile
from services.worker.server import build_config


def test_an_armed_profile_traces_the_next_count_steps_and_writes_their_summary(tmp_path) -> None:  # noqa: ANN001
    profile = KernelProfile(str(tmp_path), count=3)
    profile.after_step()  # not armed: nothing opens
    assert profile._prof is None
    profile.arm()
    x = torch.ones(64, 64)
    for _ in range(3):
        profile.after_step()
        x = x @ x / 64
    assert profile.num_windows == 0  # open for 3 steps after the one that opened it
    profile.after_step()
    assert profile.num_windows == 1 and profile._prof is None
    summary = json.loads((tmp_path / "worker_kernels.json").read_text())
    assert summary["steps"] == 3 and summary["wall_s"] > 0
    assert (tmp_path / "worker_kernels.txt").read_text().startswith("3 steps in ")
    trace = json.loads((tmp_path / "worker_trace.json").read_text())
    assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])  # the timeline of the window
    profile.after_step()
    assert profile._prof is None  # a window opens only when armed again


def test_the_worker_flags_set_the_kernel_profile_window() -> None:
    config = build_config(["--model", "m", "--kernel-profile-dir", "out", "--kernel-profile-steps", "40"])
    assert (config.kernel_profile_dir, config.kernel_profile_steps) == ("out", 40)


def test_an_empty_kernel_profile_window_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="kernel_profile_steps"):
        build_config(["--model", "m", "--kernel-profile-steps", "0"])
