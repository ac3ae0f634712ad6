"""Decode and a bare streaming kernel timed over sizes and replay lengths: a fixed cost shows as the intercept of a
line through (size, time).

    python3 -m bench.attention.fixed_costs --overhead --json OUT.json  # copy and decode over sizes: cost per launch
    python3 -m bench.attention.fixed_costs --replay --json OUT.json    # decode in replays of 2 to 64 calls

--replay is how the benchmark's REPLAY_BYTES was chosen (timing.py): what a timed replay costs besides its calls.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from bench.attention.timing import PAGE_SIZES, ROTATE_BYTES, bench_decode, graph_ms, require_cuda, run_meta


def fit_fixed_cost(points: list[tuple[float, float]]) -> dict:
    """Least-squares line through (bytes, microseconds): the fixed cost of a launch and the streaming bandwidth."""
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    slope = sum((b - mean_b) * (t - mean_t) for b, t in points) / sum((b - mean_b) ** 2 for b, _ in points)
    return {"fixed_us": mean_t - slope * mean_b, "stream_tbps": 1e-6 / slope}


def overhead_series() -> dict:
    """Time against bytes, in CUDA-graph replays like the decode rows: a streaming kernel (negation: one read, one
    write per element; a graph turns copy_ into a memcpy node, not a kernel) at several sizes and decode at several
    contexts. A fixed per-launch cost shows as the intercept of time over bytes."""
    copies = []
    for moved_mb in (67, 134, 268, 536, 1074):
        numel = int(moved_mb * 1e6 / 4)  # bf16, read once and written once
        count = max(1, min(32, math.ceil(ROTATE_BYTES / (moved_mb * 1e6))))
        pairs = [(torch.randn(numel, device="cuda", dtype=torch.bfloat16),
                  torch.empty(numel, device="cuda", dtype=torch.bfloat16)) for _ in range(count)]
        ms = graph_ms([lambda s=s, d=d: torch.neg(s, out=d) for s, d in pairs])
        copies.append({"bytes": 4 * numel, "us": 1e3 * ms, "tbps": 4 * numel / ms / 1e9})
        del pairs
    decode = []
    for batch, context in ((1, 4096), (1, 8192), (1, 16384), (1, 32768), (1, 65536), (16, 1024), (16, 2048),
                           (16, 4096), (16, 8192)):
        for block_size in PAGE_SIZES:
            row = bench_decode(batch, context, None, None, peers=False, block_size=block_size)
            decode.append({k: row[k] for k in ("batch", "context", "block_size", "num_splits", "kv_bytes", "ours_tbps")}
                          | {"us": row["kv_bytes"] / row["ours_tbps"] / 1e6})
    fits = {"stream_kernel": fit_fixed_cost([(r["bytes"], r["us"]) for r in copies])}
    for batch in (1, 16):
        for block_size in PAGE_SIZES:
            points = [(r["kv_bytes"], r["us"]) for r in decode if r["batch"] == batch and r["block_size"] == block_size]
            fits[f"decode_batch{batch}_page{block_size}"] = fit_fixed_cost(points)
    return {"copy_series": copies, "decode_series": decode, "fits": fits}


# (batch, context) and the bytes a replay reads at least (0: one rotation) for --replay.
REPLAY_SHAPES = ((16, 4096), (1, 32768))
REPLAY_SERIES_BYTES = (0, 2**30, 2 * 2**30, 4 * 2**30, 8 * 2**30)


def replay_series() -> dict:
    """Decode timed in replays of more and more calls: the line through (calls, microseconds per replay) gives what
    a replay costs besides its calls (its intercept) and a call's time in a long stream of calls (its slope), for
    ours, ours launched the ordinary way and SDPA. A last row per shape times one rotation per replay with the
    replays back to back and no cache clearing between them."""
    rows, fits = [], {}
    for batch, context in REPLAY_SHAPES:
        for block_size in PAGE_SIZES:
            series = []
            for replay_bytes in REPLAY_SERIES_BYTES:
                row = bench_decode(batch, context, None, None, peers=block_size == PAGE_SIZES[0],
                                   block_size=block_size, replay_bytes=replay_bytes)
                row["replay_bytes"] = replay_bytes
                print("replay", {k: v for k, v in row.items() if k != "config"}, flush=True)
                series.append(row)
            # One rotation per replay again, the replays queued back to back with no cache clearing between them.
            row = bench_decode(batch, context, None, None, peers=block_size == PAGE_SIZES[0], block_size=block_size,
                               replay_bytes=0, back_to_back=True)
            row["replay_bytes"] = 0
            print("replay", {k: v for k, v in row.items() if k != "config"}, flush=True)
            rows += series + [row]
            for key in ("ours_tbps", "ours_ordinary_launch_tbps", "sdpa_tbps"):
                points = [(r["calls_per_replay"], r["calls_per_replay"] * r["kv_bytes"] / r[key] / 1e6)
                          for r in series if key in r]
                if len(points) > 1:
                    line = fit_fixed_cost(points)  # "bytes" here are calls: stream_tbps is 1e-6 / (us per call)
                    us_per_call = 1e-6 / line["stream_tbps"]
                    fits[f"{key[:-5]}_{batch}x{context}_page{block_size}"] = {
                        "us_per_replay": line["fixed_us"], "us_per_call": us_per_call,
                        "tbps_per_call": series[0]["kv_bytes"] / us_per_call / 1e6}
    return {"replay_series": rows, "fits": fits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--overhead", action="store_true", help="copy and decode over sizes: fixed cost per launch")
    which.add_argument("--replay", action="store_true", help="decode in replays of more and more calls")
    args = parser.parse_args(argv)
    if not require_cuda("bench.attention.fixed_costs"):
        return 2
    command = "python3 -m bench.attention.fixed_costs " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"meta": run_meta(command), **(replay_series() if args.replay else overhead_series())}
    print(json.dumps(report["fits"], indent=1))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
