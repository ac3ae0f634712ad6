"""The stage profiler charges each sample to the innermost frame that names a part of the step."""

from __future__ import annotations

import pytest

from bench.stage_profile import categorise, hot_frames, to_markdown


@pytest.mark.timeout(30)
def test_samples_go_to_the_innermost_matching_category() -> None:
    raw = "\n".join([
        "main (services/cli.py:41);_send_loop (services/scheduler/worker_pool.py:96);_write (grpc/aio/_call.py:500) 6",
        "main (services/cli.py:41);build_plan (services/scheduler/engine.py:119);_commit (services/scheduler/scheduler.py:196) 3",
        "main (services/cli.py:41);plan_to_pb (services/scheduler/pb.py:64) 2",
        "main (services/cli.py:41);something (elsewhere.py:1) 1",
    ])
    counts, total = categorise(raw)
    assert total == 12
    assert dict(counts) == {"gRPC": 6, "scheduling": 3, "protobuf conversion": 2, "other": 1}


@pytest.mark.timeout(30)
def test_the_markdown_lists_each_stage_with_its_busy_fraction_and_shares() -> None:
    text = to_markdown({"scheduler": {"busy": 0.5, "gRPC": 0.6, "scheduling": 0.4}}, 20)
    assert "- **scheduler** (busy 0.50): gRPC 60%, scheduling 40%" in text


@pytest.mark.timeout(30)
def test_hot_frames_charge_each_sample_to_its_innermost_project_function_and_the_library_call_inside_it() -> None:
    raw = "\n".join([
        "run (/srv/app/services/cli.py:41);replay (/srv/app/services/worker/cuda_graphs.py:190);"
        "replay (/usr/lib/python3/site-packages/torch/cuda/graphs.py:88) 5",
        "run (/srv/app/services/cli.py:41);replay (/srv/app/services/worker/cuda_graphs.py:192);"
        "replay (/usr/lib/python3/site-packages/torch/cuda/graphs.py:88) 1",
        "run (/srv/app/services/cli.py:41);apply (/srv/app/services/worker/sequences.py:77) 3",
        "select (/usr/lib/python3.12/selectors.py:468) 1",
    ])
    assert hot_frames(raw) == [
        ("replay (services/worker/cuda_graphs.py) > replay (graphs.py)", 0.6),
        ("apply (services/worker/sequences.py)", 0.3),
        ("select (selectors.py)", 0.1),
    ]
    text = to_markdown({"worker": {"busy": 0.5, "sampling": 1.0, "hot": hot_frames(raw, limit=1)}}, 5)
    assert "- **worker** (busy 0.50): sampling 100%\n  - 60% `replay (services/worker/cuda_graphs.py) > replay " \
           "(graphs.py)`" in text
