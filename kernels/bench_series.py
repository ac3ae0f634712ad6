"""Decode and copy timed over sizes and replay lengths, for kernels/bench.py's --overhead, --replay and --pdl-ab:
a fixed cost shows as the intercept of a line through (size, time)."""

from __future__ import annotations

import dataclasses
import math

import torch

from kernels.bench import PAGE_SIZES, ROTATE_BYTES, _decode_launch_choice, _graph_ms, bench_decode

# (batch, context, page size): split decode shapes for the dependent-launch A/B (--pdl-ab).
PDL_AB_SHAPES = [(1, 32768, 64), (1, 4096, 64), (1, 32768, 16), (4, 32768, 64)]


def pdl_ab(rounds: int = 3) -> dict:
    """The default decode config with and without the merge kernel launched as a programmatic dependent launch,
    alternating in one process (`rounds` times each, so drift between them shows)."""
    rows = []
    for batch, context, block_size in PDL_AB_SHAPES:
        splits, base = _decode_launch_choice(batch, context, block_size)
        row: dict = {"batch": batch, "context": context, "block_size": block_size, "num_splits": splits,
                     "tma": base.tma, "off_tbps": [], "on_tbps": []}
        for _ in range(rounds):
            for key, pdl in (("off_tbps", False), ("on_tbps", True)):
                cfg = dataclasses.replace(base, pdl_merge=pdl)
                result = bench_decode(batch, context, splits, cfg, peers=False, block_size=block_size)
                row[key].append(result["ours_tbps"])
                row[f"rel_err_{key[:-5]}"] = result["rel_err_vs_sdpa"]
        row["median_off_tbps"], row["median_on_tbps"] = (sorted(row[k])[rounds // 2] for k in ("off_tbps", "on_tbps"))
        print("pdl_ab", row, flush=True)
        rows.append(row)
    return {"pdl_ab": rows}


def _fit_fixed_cost(points: list[tuple[float, float]]) -> dict:
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
        ms = _graph_ms([lambda s=s, d=d: torch.neg(s, out=d) for s, d in pairs])
        copies.append({"bytes": 4 * numel, "us": 1e3 * ms, "tbps": 4 * numel / ms / 1e9})
        del pairs
    decode = []
    for batch, context in ((1, 4096), (1, 8192), (1, 16384), (1, 32768), (1, 65536), (16, 1024), (16, 2048),
                           (16, 4096), (16, 8192)):
        for block_size in PAGE_SIZES:
            row = bench_decode(batch, context, None, None, peers=False, block_size=block_size)
            decode.append({k: row[k] for k in ("batch", "context", "block_size", "num_splits", "kv_bytes", "ours_tbps")}
                          | {"us": row["kv_bytes"] / row["ours_tbps"] / 1e6})
    fits = {"stream_kernel": _fit_fixed_cost([(r["bytes"], r["us"]) for r in copies])}
    for batch in (1, 16):
        for block_size in PAGE_SIZES:
            points = [(r["kv_bytes"], r["us"]) for r in decode if r["batch"] == batch and r["block_size"] == block_size]
            fits[f"decode_batch{batch}_page{block_size}"] = _fit_fixed_cost(points)
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
                    line = _fit_fixed_cost(points)  # "bytes" here are calls: stream_tbps is 1e-6 / (us per call)
                    us_per_call = 1e-6 / line["stream_tbps"]
                    fits[f"{key[:-5]}_{batch}x{context}_page{block_size}"] = {
                        "us_per_replay": line["fixed_us"], "us_per_call": us_per_call,
                        "tbps_per_call": series[0]["kv_bytes"] / us_per_call / 1e6}
    return {"replay_series": rows, "fits": fits}
