"""bench/serve.py end to end: launches the stack on the fake worker, drives it over HTTP, writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import serve

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_serve_benchmark_against_the_fake_worker_reports_every_request_and_token(tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert serve.main(["make-model", "--preset", "qwen2.5-0.5b", str(model)]) == 0
    out = tmp_path / "res" / "serve"
    launch = "--load-format fake --device cpu --num-gateways 2 --num-tokenizers 1"  # every replica's CPU apart
    assert serve.main(["run", "--model", str(model), "--launch", launch,
                       "--dataset", "sharegpt", "--num-requests", "20", "--client-procs", "2",
                       "--out", str(out), "--log-dir", str(tmp_path / "logs")]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    for key in ("date", "device", "python", "versions", "command", "scenarios"):
        assert key in doc
    (sc,) = doc["scenarios"]
    r = sc["result"]
    assert (r["num_requests"], r["completed"], r["failed"]) == (20, 20, 0)
    assert r["total_input_tokens"] == r["expected_input_tokens"]
    assert r["total_output_tokens"] == r["expected_output_tokens"]
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(r[key]) == {"mean", "p50", "p90", "p99"}
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert r[key]["p50"] > 0
    # SSE events that come in one socket read share an arrival time, so behind a fast fake worker on a busy machine
    # over half the gaps can be zero; some are not, as tokens come from separate steps.
    assert r["itl_s"]["p50"] >= 0 and r["itl_s"]["p99"] > 0
    for key in ("request_throughput", "output_throughput", "goodput_requests_per_s", "duration_s"):
        assert r[key] > 0
    assert sc["gpu_busy"] is None  # no NVML GPU on a CPU machine
    assert set(sc["stages"]) == {"scheduler", "worker0"}
    assert sc["stages"]["scheduler"]["preemptions"] == 0.0
    assert set(sc["cpu_s"]) == {"client", "gateway", "gateway2", "tokenizer", "scheduler", "worker"}
    assert all(seconds > 0 for seconds in sc["cpu_s"].values())
    assert "| serve |" not in out.with_suffix(".md").read_text() and "| run |" in out.with_suffix(".md").read_text()
    assert "| scenario | client | gateway | gateway2 | scheduler | tokenizer | worker |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
