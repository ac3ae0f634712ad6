"""Serving benchmark of the whole stack over the OpenAI HTTP API (SSE), open-loop.

  python -m bench.serve make-model --preset llama-3.1-8b DIR
  python -m bench.serve run --model DIR --launch "--load-format dummy --device cuda" --dataset sharegpt \
      --num-requests 1000 --concurrency 1000 --out bench/results/serve_x
  python -m bench.serve run --base-url http://127.0.0.1:8000 --model DIR --request-rate 4 --request-rate 8 ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import environment
from bench.serve_client import default_client_procs, run_load
from bench.serve_data import make_model, request_set
from bench.serve_report import (Sampler, markdown, plot, process_cpu_s, saturated_window, scenario_stats, scrape,
                                stage_metrics)
from bench.stage_profile import stage_processes
from services.launcher import build_stack_argv, free_port, python_path_env
from services.up_options import parse_args as parse_up_args


class LaunchedStack:
    """`flashstream up` as a child process on free ports; stops it on exit."""

    def __init__(self, model_dir: str, extra: str, log_dir: Path | None, num_workers: int = 1) -> None:
        self.base = _free_base_port()
        self.http = free_port()
        cmd = [sys.executable, "-m", "services.cli", "up", "--model", model_dir, "--base-port", str(self.base),
               "--http-port", str(self.http), "--prompt", "", *shlex.split(extra)]
        up = parse_up_args(cmd[4:])  # the stack as `flashstream up` resolves it
        self.num_workers = up.num_workers
        self.num_stages = len(build_stack_argv(up, model_dir))
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--log-dir", str(log_dir)]
            out = open(log_dir / "up.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, env=python_path_env(), stdout=out, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.http}"

    def metric_urls(self) -> dict[str, str]:
        urls = {"scheduler": f"http://127.0.0.1:{self.base + 102}/metrics"}
        for i in range(self.num_workers):
            urls[f"worker{i}"] = f"http://127.0.0.1:{self.base + 103 + i}/metrics"
        return urls

    def stage_pids(self) -> dict[str, int]:
        """Every stage process of the stack (each replica), by stage name, numbered when repeated."""
        return stage_processes(self.proc.pid)

    def wait_ready(self, timeout_s: float) -> None:
        """Until the gateway is ready and every stage process has started (replicas start one after another)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"flashstream up exited with code {self.proc.returncode}")
            try:
                ready = urllib.request.urlopen(self.base_url + "/ready", timeout=2).status == 200
            except OSError:
                ready = False
            if ready and len(self.stage_pids()) >= self.num_stages:
                return
            time.sleep(0.3)
        raise SystemExit(f"stack not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_base_port() -> int:
    """A base port B with B..B+9 and B+100..B+109 free (the launcher's fixed offsets)."""
    import socket

    for _ in range(200):
        base = int(np.random.default_rng().integers(20000, 40000))
        try:
            socks = []
            for off in [*range(10), *range(100, 110)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free port range found")


def arrivals(num: int, rate: float, seed: int) -> list[float]:
    """Send offsets in seconds: all at 0 for rate inf, else a Poisson process (exponential gaps) at `rate`/s."""
    if rate == float("inf"):
        return [0.0] * num
    gaps = np.random.Generator(np.random.PCG64(seed + 2)).exponential(1.0 / rate, num)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()


def run_scenario(name: str, base_url: str, model_dir: Path, metric_urls: dict[str, str], *, dataset: str,
                 num_requests: int, input_len: int, output_len: int, concurrency: int, rate: float, seed: int,
                 sampling: dict, client_procs: int, slo_ttft_s: float, slo_tpot_s: float,
                 stage_pids: dict[str, int] | None = None,
                 on_start: Callable[[float], None] | None = None) -> dict[str, Any]:
    """One load against the stack; stage_pids (a launched stack's processes) adds each one's CPU time in the run;
    on_start is told the load's starting instant (time.time())."""
    specs = request_set(model_dir, num_requests, seed, dataset, input_len, output_len)
    pids = stage_pids or {}
    before = scrape(metric_urls)
    cpu_before = process_cpu_s(pids)
    with Sampler(metric_urls) as sampler:
        load = run_load(base_url, "", specs, arrivals(num_requests, rate, seed), concurrency or num_requests,
                        sampling, client_procs, on_start)
    records, t0, end = load.records, load.t0, load.end
    after = scrape(metric_urls)
    cpu_after = process_cpu_s(pids)
    last_chunk = max((r.chunk_times[-1] for r in records if r.chunk_times), default=end)
    result = scenario_stats(records, t0, end, slo_ttft_s, slo_tpot_s)
    result["expected_input_tokens"] = sum(s.input_len for s in specs)
    result["expected_output_tokens"] = sum(s.output_len for s in specs)
    saturated = saturated_window(records, concurrency or num_requests)
    return {"name": name, "dataset": dataset, "num_requests": num_requests, "concurrency": concurrency or num_requests,
            "request_rate": None if rate == float("inf") else rate, "sampling": sampling,
            "client_procs": client_procs, "result": result, "gpu_busy": sampler.gpu_busy(t0, last_chunk),
            "gpu_busy_saturated": sampler.gpu_busy(*saturated) if saturated else None,
            # The same two read at 10 Hz and set at each read's instant (see Sampler): the figures before the
            # driver's periods were used, kept beside them.
            "gpu_busy_polled": [sampler.gpu_busy_polled(t0, last_chunk),
                                sampler.gpu_busy_polled(*saturated) if saturated else None],
            "gpu_clock_saturated": sampler.clock_power(*saturated) if saturated else None,
            "saturated_s": None if saturated is None else [round(saturated[0] - t0, 3), round(saturated[1] - t0, 3)],
            "stages": stage_metrics(before, after, sampler.kv_peak),
            "idle_by_tenth": sampler.idle_by_tenth(t0, last_chunk),
            "cpu_s": {"client": load.cpu_s,
                      **{name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}}}


def sampling_of(args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {"ignore_eos": not args.no_ignore_eos}
    for key in ("temperature", "top_p", "seed"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def write_results(out: Path, scenarios: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {**environment(), **(extra or {}), "scenarios": scenarios}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(scenarios)
    skipped = "".join(f"\nSkipped (the run's deadline came first): {name}\n" for name in doc.get("skipped", []))
    out.with_suffix(".md").write_text(f"# Serving benchmark\n\n{doc['device']}, {doc['date']}\n\n`{doc['command']}`"
                                      f"\n\n{table}{skipped}")
    msg = plot(scenarios, str(out.with_suffix(".png")))
    if msg:
        print(msg, file=sys.stderr)
    print(table)


def cmd_run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    stack = None
    if args.launch is not None:
        stack = LaunchedStack(str(model_dir.resolve()), args.launch, Path(args.log_dir) if args.log_dir else None)
        base_url, metric_urls = stack.base_url, stack.metric_urls()
    else:
        base_url, metric_urls = args.base_url, {}
        for url in args.metrics_url or []:
            metric_urls[url] = url
    pids: dict[str, int] | None = None
    try:
        if stack:
            stack.wait_ready(args.ready_timeout_s)
            pids = stack.stage_pids()
        rates = args.request_rate or [float("inf")]
        scenarios = [run_scenario(f"{args.name}@{r:g}/s" if r != float("inf") else args.name, base_url, model_dir,
                                  metric_urls, dataset=args.dataset, num_requests=args.num_requests,
                                  input_len=args.input_len, output_len=args.output_len,
                                  concurrency=args.concurrency, rate=r, seed=args.seed_data,
                                  sampling=sampling_of(args), client_procs=args.client_procs,
                                  slo_ttft_s=args.slo_ttft_ms / 1e3, slo_tpot_s=args.slo_tpot_ms / 1e3,
                                  stage_pids=pids)
                     for r in rates]
    finally:
        if stack:
            stack.stop()
    write_results(Path(args.out), scenarios)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    mm = sub.add_parser("make-model", help="write a checkpoint folder (config + tokenizer) of a preset")
    mm.add_argument("--preset", required=True)
    mm.add_argument("dir")
    r = sub.add_parser("run", help="run one scenario (or a rate sweep)")
    r.add_argument("--model", required=True, help="checkpoint folder (from make-model) the stack serves")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--launch", help="extra `flashstream up` args; starts the stack on free ports")
    where.add_argument("--base-url", help="a running stack's gateway HTTP address")
    r.add_argument("--metrics-url", action="append", help="with --base-url: a stage's /metrics (repeatable)")
    r.add_argument("--name", default="run")
    r.add_argument("--dataset", choices=("fixed", "sharegpt"), default="sharegpt")
    r.add_argument("--num-requests", type=int, default=100)
    r.add_argument("--input-len", type=int, default=128)
    r.add_argument("--output-len", type=int, default=128)
    r.add_argument("--concurrency", type=int, default=0, help="requests in flight at most (0: all)")
    r.add_argument("--request-rate", type=float, action="append", help="Poisson arrivals per second (repeat: sweep)")
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--top-p", type=float, default=None)
    r.add_argument("--seed", type=int, default=None, help="sampling seed sent with each request")
    r.add_argument("--seed-data", type=int, default=0, help="seed of the request set and arrivals")
    r.add_argument("--no-ignore-eos", action="store_true")
    r.add_argument("--client-procs", type=int, default=default_client_procs())
    r.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    r.add_argument("--slo-tpot-ms", type=float, default=50.0)
    r.add_argument("--ready-timeout-s", type=float, default=600.0)
    r.add_argument("--log-dir", default=None)
    r.add_argument("--out", default="bench/results/serve_run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "make-model":
        print(make_model(args.preset, Path(args.dir)))
        return 0
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
