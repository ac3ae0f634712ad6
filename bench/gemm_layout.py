"""bf16 projections of a model through cuBLAS in both weight layouts, from one row to a prompt step's thousands.

A CUDA worker stores o_proj, gate_up_proj and down_proj input-major (`store_projections_input_major`), a choice
made on batch-1 timings. Serving steps also run hundreds of decode rows and prompt steps of thousands of tokens;
this says, per projection and row count, which layout is faster there, in µs per call and TFLOP/s (a CUDA graph of
calls, weights rotated through more copies than the L2 holds where they are small enough to matter).

It also runs one large GEMM back to back for a few seconds while sampling NVML's SM clock, power draw and clock
event reasons: whether a long prompt step runs at the clock a short kernel sees, or at the power limit's.

    python -m bench.gemm_layout --preset llama-3.1-8b --out-dir $OUT
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, write_results
from bench.engine import graph_us
from services.worker.model_config import ModelConfig
from services.worker.presets import preset_config

L2_BYTES = 60e6  # an H100's or H200's L2 is 50 to 60 MB
ROWS = (1, 64, 256, 512, 1024, 2048, 4096, 8192)


def projections(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(name, n_out, k_in) of one decoder layer's projections and the LM head."""
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    return [("qkv_proj", cfg.q_size + 2 * cfg.kv_size, hidden), ("o_proj", hidden, cfg.q_size),
            ("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter), ("lm_head", cfg.vocab_size, hidden)]


def time_layouts(n_out: int, k_in: int, rows: tuple[int, ...], num_calls: int) -> list[dict[str, Any]]:
    """µs per call and TFLOP/s of F.linear(x [m, k_in], W [n_out, k_in]) with W stored [n_out, k_in] (output-major,
    PyTorch's default) and as the transpose of a contiguous [k_in, n_out] (input-major), at each row count m."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    copies = max(1, int(2 * L2_BYTES // (n_out * k_in * 2)) + 1)
    out_major = [torch.randn(n_out, k_in, device=dev, dtype=dtype) for _ in range(copies)]
    in_major = [w.t().contiguous().t() for w in out_major]  # same shape and values, strides (1, n_out)
    cells = []
    for m in rows:
        x = torch.randn(m, k_in, device=dev, dtype=dtype)
        cell: dict[str, Any] = {"rows": m}
        for label, weights in (("output_major", out_major), ("input_major", in_major)):
            calls = max(3, min(num_calls, int(num_calls * 64 / max(m, 64))))  # big products: fewer calls
            us = graph_us(lambda i, w=weights: torch.nn.functional.linear(x, w[i % copies]), calls, warmup=copies)
            cell[label] = {"us": us, "tflops": round(2 * m * n_out * k_in / us / 1e6, 1)}
        cells.append(cell)
        del x
    del out_major, in_major
    torch.cuda.empty_cache()
    return cells


def sustained(n_out: int, k_in: int, m: int, seconds: float) -> dict[str, Any]:
    """One GEMM of m rows run back to back for `seconds`: its TFLOP/s over the run and NVML's SM clock (MHz), power
    (W) and clock event reasons sampled every 50 ms (None where NVML is missing)."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    w = torch.randn(n_out, k_in, device=dev, dtype=dtype)
    x = torch.randn(m, k_in, device=dev, dtype=dtype)
    out = torch.empty(m, n_out, device=dev, dtype=dtype)
    samples: list[tuple[int, float, int]] = []
    stop = threading.Event()
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
        max_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except Exception:  # noqa: BLE001 - no NVML: the timing alone
        pynvml, handle, limit_w, max_mhz = None, None, None, None

    def sample() -> None:
        # nvidia-ml-py renamed "throttle reasons" to "clock event reasons"; either name, whichever this one has
        reasons_of = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        while not stop.wait(0.05):
            samples.append((pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                            pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3, reasons_of(handle)))

    for _ in range(3):
        torch.nn.functional.linear(x, w, out=out)
    torch.cuda.synchronize()
    thread = threading.Thread(target=sample, daemon=True) if pynvml is not None else None
    if thread:
        thread.start()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            torch.nn.functional.linear(x, w, out=out)
        calls += 20
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    stop.set()
    if thread:
        thread.join()
    reasons = 0
    for s in samples:
        reasons |= s[2]
    prefixes = ("nvmlClocksEventReason", "nvmlClocksThrottleReason")
    names = [n.removeprefix(prefixes[0]).removeprefix(prefixes[1]) for n in dir(pynvml or object)
             if n.startswith(prefixes) and not n.endswith("All") and isinstance(getattr(pynvml, n), int)
             and getattr(pynvml, n) & reasons]
    half = samples[len(samples) // 2:]  # past the first second's boost
    return {"rows": m, "n_out": n_out, "k_in": k_in, "seconds": round(wall, 2),
            "tflops": round(2 * m * n_out * k_in * calls / wall / 1e12, 1),
            "sm_mhz_max": max_mhz, "power_limit_w": limit_w,
            "sm_mhz_mean_second_half": round(sum(s[0] for s in half) / len(half)) if half else None,
            "power_w_mean_second_half": round(sum(s[1] for s in half) / len(half)) if half else None,
            "clock_event_reasons": sorted(set(names))}


def markdown(preset: str, table: dict[str, list[dict[str, Any]]], held: dict[str, Any]) -> str:
    lines = [f"{preset}: µs per call (TFLOP/s) of F.linear in bf16 with the weight stored output-major (PyTorch's "
             "default) and input-major (what a CUDA worker stores for o_proj, gate_up_proj and down_proj)", "",
             "| projection | rows | output-major | input-major | input / output |", "|---|---|---|---|---|"]
    for name, cells in table.items():
        for c in cells:
            a, b = c["output_major"], c["input_major"]
            lines.append(f"| {name} | {c['rows']} | {a['us']} ({a['tflops']}) | {b['us']} ({b['tflops']}) | "
                         f"{b['us'] / a['us']:.2f} |")
    lines += ["", f"Held for {held['seconds']} s: {held['rows']} x {held['k_in']} by {held['k_in']} x {held['n_out']}"
              f" back to back, {held['tflops']} TFLOP/s; SM clock {held['sm_mhz_mean_second_half']} MHz (max "
              f"{held['sm_mhz_max']}), power {held['power_w_mean_second_half']} W (limit {held['power_limit_w']}) "
              f"over its second half; clock event reasons seen: {', '.join(held['clock_event_reasons']) or 'none'}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama-3.1-8b")
    p.add_argument("--rows", default=",".join(map(str, ROWS)))
    p.add_argument("--num-calls", type=int, default=50)
    p.add_argument("--hold-s", type=float, default=4.0, help="how long the sustained GEMM runs")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--out-name", default="gemm_layout_h200")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gemm_layout.py needs a CUDA device")
    cfg = preset_config(args.preset)
    rows = tuple(int(r) for r in args.rows.split(","))
    table = {name: time_layouts(n, k, rows, args.num_calls) for name, n, k in projections(cfg)}
    gate_up = next((n, k) for name, n, k in projections(cfg) if name == "gate_up_proj")
    held = sustained(*gate_up, max(rows), args.hold_s)
    md = markdown(args.preset, table, held)
    print(md)
    write_results(args.out_name, {"preset": args.preset, "projections": table, "sustained": held}, md, args.out_dir)


if __name__ == "__main__":
    main()
