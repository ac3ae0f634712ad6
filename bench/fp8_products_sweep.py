"""The FP8-products split-K kernel's tilings against torch._scaled_mm, for the rows of batched decode steps.

From a few tens of rows to a few hundred, a decode step's projections are still bound by the weights' bytes, and
_scaled_mm (cuBLASLt) reads them well below the device's bandwidth there. This sweep times, for the four
projection shapes of Llama-3.1-8B (qkv, o, gate_up, down) at each row count, _scaled_mm and every tiling of
`fp8_gemv` with FP8 products in a grid (block_m, block_n, block_k, stages, warps, programs per SM), each checked
against the dequantised reference on the same FP8-rounded rows first. Times are µs per call of a CUDA graph of 50
calls, weights rotated through more copies than the L2 holds. The summary gives, per row count, the configs with
the least sum over a layer's four projections against _scaled_mm's sum; kernels/fp8_linear.py's
FP8_PRODUCTS_BANDS are picked from it.

    python bench/fp8_products_sweep.py --rows 64,128,96,192,256 --budget-s 170 --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from bench.fp8_projections import MAX_RELATIVE_ERROR, projection_shapes, rotation_copies  # noqa: E402
from services.worker.presets import preset_config  # noqa: E402

# (name, N, K) of Llama-3.1-8B's four projections, named as the results name them
SHAPES = tuple((name.removesuffix("_proj"), n, k) for name, n, k in projection_shapes(preset_config("llama-3.1-8b")))


def grid() -> list[tuple[int, int, int, int, int, int]]:
    """(block_m, block_n, block_k, stages, warps, programs per SM) of every config timed."""
    tiles = ((64, 128), (64, 256), (128, 64), (128, 128), (128, 256), (256, 64), (256, 128))
    out = [(64, bn, bk, st, w, pps)
           for (bn, bk), st, w, pps in itertools.product(tiles, (2, 3, 4), (4, 8), (1, 2, 3, 4))]
    out += [(128, bn, bk, st, 8, pps) for (bn, bk), st, pps in itertools.product(
        ((128, 64), (128, 128), (256, 64)), (2, 3), (1, 2))]
    return out


def sweep(rows: list[int], budget_s: float) -> dict[str, Any]:
    """Times every config of grid() and _scaled_mm at each row count and shape (row counts in the order given,
    until budget_s has passed)."""
    import torch

    from bench.engine import graph_us_or_error
    from kernels.fp8_gemv import GemvConfig, fp8_gemv, fp8_gemv_ref, gemv_plan, num_sms
    from kernels.fp8_linear import fp8_scaled_mm
    from kernels.fp8_quant import quantize_fp8_rows

    start = time.monotonic()
    dev = torch.device("cuda")
    weights = {}
    for name, n, k in SHAPES:
        weights[name] = [(q, s.view(-1)) for q, s in (
            quantize_fp8_rows(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02)
            for _ in range(rotation_copies(n * k)))]
    cells: list[dict[str, Any]] = []
    for m, (name, n, k) in itertools.product(rows, SHAPES):
        if time.monotonic() - start > budget_s:
            break
        fp8 = weights[name]
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        q, x_scale = quantize_fp8_rows(x)
        want = fp8_gemv_ref((q.float() * x_scale).to(x.dtype), *fp8[0]).float()
        cells.append({"shape": name, "rows": m, "scaled_mm_us": graph_us_or_error(
            lambda i: fp8_scaled_mm(x, *fp8[i % len(fp8)]))})  # noqa: B023
        timed: dict[Any, Any] = {}  # plan -> µs or error
        for cfg_tuple in grid():
            bm, bn, bk, stages, warps, pps = cfg_tuple
            cfg = GemvConfig(fp8_products=True, block_m=bm, block_n=bn, block_k=bk, num_stages=stages,
                             num_warps=warps, programs_per_sm=pps)
            plan = gemv_plan(m, n, k, num_sms(dev), cfg)
            if plan not in timed:
                try:
                    got = fp8_gemv(x, *fp8[0], config=cfg).float()
                    error = ((got - want).norm() / want.norm()).item()
                    def call(i: int) -> None:
                        fp8_gemv(x, *fp8[i % len(fp8)], config=cfg)  # noqa: B023

                    timed[plan] = (graph_us_or_error(call) if error < MAX_RELATIVE_ERROR
                                   else f"wrong: relative error {error:.3g}")
                except Exception as exc:  # noqa: BLE001 - a config that does not compile loses its cell only
                    timed[plan] = type(exc).__name__
            cells.append({"shape": name, "rows": m, "cfg": list(cfg_tuple), "plan": list(plan), "us": timed[plan]})
        print(f"[{time.monotonic() - start:.0f} s] {name}, {m} rows: {len(timed)} plans", flush=True)
    return {"rows": rows, "shapes": [list(s) for s in SHAPES], "cells": cells, "summary": summary(cells)}


def summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row count: _scaled_mm's layer sum and the three configs of least layer sum (over all four shapes)."""
    by_rows: dict[int, dict[tuple, dict[str, float]]] = {}
    scaled: dict[int, dict[str, float]] = {}
    for c in cells:
        if "scaled_mm_us" in c and isinstance(c["scaled_mm_us"], float):
            scaled.setdefault(c["rows"], {})[c["shape"]] = c["scaled_mm_us"]
        elif "cfg" in c and isinstance(c["us"], float):
            by_rows.setdefault(c["rows"], {}).setdefault(tuple(c["cfg"]), {})[c["shape"]] = c["us"]
    out = {}
    for m, table in sorted(by_rows.items()):
        full = {cfg: times for cfg, times in table.items() if len(times) == len(SHAPES)}
        top = sorted(full.items(), key=lambda t: sum(t[1].values()))[:3]
        out[str(m)] = {"scaled_mm_us": scaled.get(m, {}),
                       "top": [{"cfg": list(cfg), "us": times} for cfg, times in top]}
    return out


def to_markdown(results: dict[str, Any]) -> str:
    names = [s[0] for s in SHAPES]
    lines = ["µs per call by projection (Llama-3.1-8B shapes) and their sum over a layer. cfg: block_m, block_n, "
             "block_k, stages, warps, programs per SM.", "",
             f"| rows | kernel | {' | '.join(names)} | layer |", "|---|---|" + "---|" * (len(names) + 1)]
    for m, row in sorted(results["summary"].items(), key=lambda item: int(item[0])):
        scaled = row["scaled_mm_us"]
        if len(scaled) == len(names):
            lines.append(f"| {m} | _scaled_mm | {' | '.join(f'{scaled[n]:.1f}' for n in names)} | "
                         f"{sum(scaled.values()):.1f} |")
        for top in row["top"]:
            times = " | ".join(f"{top['us'][n]:.1f}" for n in names)
            lines.append(f"| {m} | FP8 products {tuple(top['cfg'])} | {times} | {sum(top['us'].values()):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="64,128,96,192,256", help="row counts, in the order to time them")
    parser.add_argument("--budget-s", type=float, default=170.0, help="no row count or shape starts after this")
    parser.add_argument("--from-json", default="", help="render the markdown of a saved run's JSON instead")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--out-name", default="fp8_products_sweep_h200")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results.setdefault("summary", summary(results["cells"]))  # a saved summary covers every cell timed
        print(to_markdown(results))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("the sweep times kernels on a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    results = sweep([int(r) for r in args.rows.split(",") if r], args.budget_s)
    write_results(args.out_name, results, to_markdown(results), Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
