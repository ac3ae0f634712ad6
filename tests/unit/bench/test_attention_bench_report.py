"""The attention benchmark's arithmetic and report, on made-up rows (the timings themselves need a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.attention.fixed_costs import fit_fixed_cost
from bench.attention.report import write_markdown


def test_fixed_cost_fit_separates_a_replays_cold_start_from_its_calls() -> None:
    # 16 us per replay plus 88 us per call, at 2, 4, 8 and 16 calls per replay.
    line = fit_fixed_cost([(calls, 16.0 + 88.0 * calls) for calls in (2, 4, 8, 16)])
    assert line["fixed_us"] == pytest.approx(16.0, abs=1e-9)
    assert 1e-6 / line["stream_tbps"] == pytest.approx(88.0, abs=1e-9)


def _report() -> dict:
    meta = {"device": "H100", "date": "d", "torch": "t", "triton": "tr", "cuda": "c", "cudnn": 1, "python": "p",
            "num_heads": 32, "num_kv_heads": 8, "block_sizes": [16, 64], "command": "python3 -m bench.attention.benchmark"}
    decode = {"batch": 16, "context": 4096, "block_size": 64, "num_splits": 1, "calls_per_replay": 16,
              "config": {"gluon": True, "num_stages": 4, "in_flight": 2, "pdl": True}, "ours_tbps": 3.0474,
              "ours_ordinary_launch_tbps": 2.9181, "sdpa_tbps": 2.9681, "ratio_to_sdpa": 3.0474 / 2.9681,
              "ratio_to_copy": 3.0474 / 3.0085, "rel_err_vs_sdpa": 1.1e-3}
    return {"meta": meta, "copy_tbps": 3.0085, "copy_one_call_tbps": 3.0030, "prefill": [], "decode": [decode]}


def test_decode_table_gives_each_rows_calls_per_replay_and_both_copy_timings(tmp_path: Path) -> None:
    path = tmp_path / "kernels.md"
    write_markdown(_report(), str(path))
    text = path.read_text()
    assert "device copy 3.01 TB/s" in text
    assert "(3.00 TB/s one at a time)" in text
    row = "| 16 × 4096 | 64 | Gluon, ring of 4, 2 in flight, dependent launch | 1 | 16 | 3.047 | 2.918 | 2.968 | 1.027 |"
    assert row in text


def test_decode_table_falls_back_to_the_rotation_for_results_without_calls_per_replay(tmp_path: Path) -> None:
    report = _report()
    del report["decode"][0]["calls_per_replay"], report["copy_one_call_tbps"]
    report["decode"][0]["rotated_copies"] = 2
    path = tmp_path / "kernels.md"
    write_markdown(report, str(path))
    text = path.read_text()
    assert "one at a time" not in text
    assert "| Gluon, ring of 4, 2 in flight, dependent launch | 1 | 2 | 3.047 |" in text
