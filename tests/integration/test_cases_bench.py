"""bench/cases.py end to end on a tiny load: translation sessions, search QA over HTTP and gRPC from a real
Redis, cached embeddings; every request answered and the report written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cases
from bench.redis_server import REDIS

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow,
              pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")]


def test_the_cases_benchmark_answers_every_request_of_a_tiny_load_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "cases"
    # A generous Redis timeout: on a busy test machine a slow GET would turn an expected hit into a miss.
    assert cases.main(["cpu", "--tiny", "--out", str(out), "--client-procs", "1", "--redis-timeout-s", "2"]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    for key in ("date", "device", "versions", "command"):
        assert doc["environment"][key]
    assert len(doc["git_commit"]) == 40 and doc["skipped"] == []

    (step,) = doc["translate"]["steps"]
    assert (step["sessions"], step["unanswered_segments"], step["failed_sessions"]) == (2, 0, 0)
    assert step["segments"] >= 4 and step["within_limits"] is True
    assert 0.5 < step["prefix_cached_share"] < 1.0  # later segments reuse the session's earlier prompt

    (search,) = doc["search"]
    assert [p["protocol"] for p in search["protocols"]] == ["http", "grpc"]
    for run in search["protocols"]:
        assert run["warm_up_failed"] == 0
        assert (run["idle_hits"]["hit"]["count"], run["idle_hits"]["failed"]) == (5, 0)
        assert run["idle_hits"]["lookup"]["lookups"] == 5
        mix, hits = run["mix"], run["hits_only"]
        assert (mix["failed"], mix["hit"]["count"] + mix["miss"]["count"]) == (0, 40)
        assert mix["miss"]["count"] >= 1  # fresh questions are generated
        assert (hits["failed"], hits["hit"]["count"]) == (0, 40)
        assert hits["gateway_cpu_s"] > 0
        (paced,) = run["paced_hits"]
        assert (paced["offered_qps"], paced["failed"], paced["hit"]["count"]) == (20.0, 0, 20)

    assert [row["batch"] for row in doc["embed"]] == [1, 4]
    for row in doc["embed"]:
        for protocol in ("http", "grpc"):
            assert row[protocol]["requests"] == 6 * 5 and row[protocol]["uncached_vectors"] == 0
            assert row[protocol]["lookup"]["lookups"] == 6 * 5 and row[protocol]["idle_lookup"]["lookups"] == 6
    text = out.with_suffix(".md").read_text()
    assert "## Live translation" in text and "## Search QA" in text and "## Cached embeddings" in text
    assert "| offered hits/s |" in text
