import json

import pytest
import torch

from services.common.errors import InvalidArgument
from services.worker.kernel_profile import KernelProfile, TimelineGaps, timeline_gaps
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
    assert profile._prof is None
    profile.join(60)  # the files are written off the stepping thread
    assert profile.num_windows == 1
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


def _op(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_timeline_gaps_sum_the_idle_time_between_device_operations_by_the_pair_around_it() -> None:
    events = [
        _op("copy", 0, 2, "gpu_memcpy"), _op("embed", 10, 5), _op("gemv", 14, 6),  # overlapping: counted once
        _op("argmax", 20, 1), _op("copy", 30, 2, "gpu_memcpy"), _op("embed", 40, 5),
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 3, "dur": 50},  # host work: not the device's
    ]
    gaps = timeline_gaps(events)
    assert (gaps.span_us, gaps.busy_us, gaps.idle_us) == (45, 20, 25)
    assert gaps.pairs == [("copy", "embed", 2, 16), ("argmax", "copy", 1, 9)]


def test_a_timeline_without_device_operations_has_no_gaps() -> None:
    assert timeline_gaps([{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5}]) == TimelineGaps(0, 0, [])
