"""The stage profiler charges each sample to the innermost frame that names a part of the step."""

from __future__ import annotations

import pytest

from bench.stage_profile import categorise, to_markdown


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
