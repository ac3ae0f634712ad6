"""How fast a burst reaches the scheduler: requests sent all at once to a launched stack (the fake worker by
default), and the time from the client's send instant until the scheduler has received the 1st, 10th, 100th,
half and all of them, beside the first-token latencies.

  python -m bench.burst_intake --num-requests 1000 --num-requests 200 --repeat 2
  python -m bench.burst_intake --launch "--load-format fake --device cpu --num-gateways 1 --num-tokenizers 1"

The scheduler's arrivals come from its debug log (one line per SchedulerUp: its request count and wall clock),
so the stack runs with `--scheduler-args '--log-level DEBUG'`; the scheduler logs nothing else at that level.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.serve import LaunchedStack
from bench.serve_client import default_client_procs, run_load
from bench.serve_data import make_model, request_set

INTAKE_LINE = re.compile(r"stream \d+: (\d+) requests in at (\d+\.\d+), at the gateway from (\d+\.\d+) to "
                         r"(\d+\.\d+)")
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def scheduler_arrivals(log_file: Path, since: float) -> tuple[list[float], float, float]:
    """The wall clock of each request's arrival at the scheduler after `since`, in order (one per request), and the
    first and last of those requests' arrivals at the gateways."""
    times: list[float] = []
    first, last = float("inf"), 0.0
    for line in log_file.read_text(errors="replace").splitlines():
        match = INTAKE_LINE.search(line)
        if match and float(match.group(2)) >= since:
            times += [float(match.group(2))] * int(match.group(1))
            first, last = min(first, float(match.group(3))), max(last, float(match.group(4)))
    return sorted(times), first, last


def burst(base_url: str, folder: Path, log_file: Path, num: int, seed: int, procs: int) -> dict[str, float]:
    """One burst of `num` ShareGPT-like requests: intake marks and first-token percentiles, seconds from t0."""
    specs = request_set(folder, num, seed, "sharegpt", 0, 0)
    load = run_load(base_url, "", specs, [0.0] * num, num, dict(GREEDY), procs)
    time.sleep(0.5)  # the scheduler's log reaches its file
    times, first, last = scheduler_arrivals(log_file, load.t0 - 0.05)
    arrivals = np.array(times) - load.t0
    failed = sum(1 for r in load.records if r.error)
    ttft = np.sort([r.chunk_times[0] - load.t0 for r in load.records if r.chunk_times])
    sends = np.array([r.start - load.t0 for r in load.records])
    out = {"requests": num, "failed": failed, "received": len(arrivals), "last_send": float(sends.max()),
           "gw_1st": first - load.t0, "gw_100%": last - load.t0}
    for name, k in (("1st", 1), ("10th", 10), ("100th", 100), ("50%", num // 2), ("100%", num)):
        out[f"in_{name}"] = float(arrivals[k - 1]) if len(arrivals) >= k else float("nan")
    for p in (1, 10, 50, 99, 100):
        out[f"ttft_p{p}"] = float(np.percentile(ttft, p)) if len(ttft) else float("nan")
    out["duration"] = load.end - load.t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.burst_intake", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.2-1b")
    p.add_argument("--cache", default="/tmp/flashstream-bench-models")
    p.add_argument("--launch", default="--load-format fake --device cpu", help="extra `flashstream up` args")
    p.add_argument("--num-requests", type=int, action="append", help="burst sizes (repeatable; default 1000, 200)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--client-procs", type=int, default=default_client_procs())
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    folder = args.cache and Path(args.cache) / args.preset
    if not (folder / "tokenizer.json").exists():
        make_model(args.preset, folder)
    log_dir = Path(tempfile.mkdtemp(prefix="burst-intake-"))
    stack = LaunchedStack(str(folder.resolve()), f"{args.launch} --scheduler-args '--log-level DEBUG'", log_dir)
    try:
        stack.wait_ready(600)
        run_load(stack.base_url, "", request_set(folder, 8, 99, "fixed", 16, 8), [0.0] * 8, 8, dict(GREEDY), 1)
        cols = ["requests", "failed", "last_send", "gw_1st", "gw_100%", "in_1st", "in_10th", "in_100th", "in_50%",
                "in_100%",
                "ttft_p1", "ttft_p10", "ttft_p50", "ttft_p99", "ttft_p100", "duration"]
        print(" ".join(f"{c:>9}" for c in cols), flush=True)
        for i in range(args.repeat):
            for num in args.num_requests or [1000, 200]:
                row = burst(stack.base_url, folder, log_dir / "scheduler.log", num, 10 * i + num,
                            args.client_procs)
                print(" ".join(f"{row[c]:>9.3f}" if isinstance(row[c], float) else f"{row[c]:>9}" for c in cols),
                      flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
