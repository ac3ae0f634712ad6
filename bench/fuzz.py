"""The long fuzz run of the public API: many hostile requests against a whole stack, zero server errors wanted.

Starts `flashstream up` on the demo model (CPU worker, free ports) and sends --cases requests drawn by
bench/fuzz_cases.py over HTTP and gRPC, one at a time per client process. Records how each was answered, every case that got a
server error (or a disallowed gRPC status), whether any malformed request reached the scheduler, and the
tokenizer's resident memory before and after. The CI test (tests/reliability/test_malformed_input.py) runs
2,000 of the same cases.

  python -m bench.fuzz --cases 100000            # writes bench/results/fuzz_api.{json,md}
  python -m bench.fuzz --cases 100000 --clients 8 --stack-args "--num-gateways 4 --num-tokenizers 2"  # 16 cores
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench.common import write_results
from bench.fuzz_cases import (GrpcClient, HttpCase, HttpClient, grpc_case, grpc_problem, http_case, http_problem,
                              resident_bytes, scheduler_counters, scheduler_counters_at, scheduler_metrics_url)
from services.demo import build_demo_model
from services.launcher import start_stack
from services.up_options import parse_args


def run_cases(gateway_http: str, gateway_grpc: str, num_cases: int, seed_value: int,
              watch_url: str = "") -> tuple[dict[str, int], list[str], list[str]]:
    """Sends num_cases drawn cases one at a time; (answers by kind, problems, cases that reached the scheduler).
    The last is filled only with watch_url (the scheduler's /metrics, read after every case: one client only, or
    another client's case could be blamed)."""
    host, port = gateway_http.removeprefix("http://").rsplit(":", 1)
    http, rpc = HttpClient(host, int(port)), GrpcClient(gateway_grpc)
    answers: dict[str, int] = {}
    problems: list[str] = []
    reached: list[str] = []
    errors = [scheduler_counters_at(watch_url)[0] if watch_url else 0.0]

    @seed(seed_value)
    @settings(max_examples=num_cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(http_case, grpc_case))
    def one(case: Any) -> None:
        if isinstance(case, HttpCase):
            status, body = http.send(case)
            problem, answer = http_problem(case, status, body), f"HTTP {status}"
        else:
            code, details = rpc.send(case)
            problem, answer = grpc_problem(case, code, details), f"gRPC {code.name}"
        answers[answer] = answers.get(answer, 0) + 1
        if problem:
            problems.append(problem)
        if watch_url and (now := scheduler_counters_at(watch_url)[0]) != errors[0]:
            errors[0] = now
            reached.append(f"{answer}: {case!r}"[:400])

    try:
        one()
    finally:
        http.close()
        rpc.close()
    return answers, problems, reached


def run(num_cases: int, seed_value: int, num_clients: int, stack_args: list[str]) -> dict[str, Any]:
    """Starts the stack, runs num_cases split over num_clients client processes (seeds seed, seed + 1, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_demo_model(Path(tmp) / "demo")
        args = parse_args(["--base-port", "0", "--http-port", "0", "--device", "cpu", "--model-id", "flashstream-demo",
                           "--ready-timeout-s", "180", *stack_args])
        stack = start_stack(args, str(model_dir), Path(tmp))
        try:
            tokenizers = [s.proc.pid for s in stack.stages if s.name.startswith("tokenizer")]
            rss_before = sum(resident_bytes(pid) for pid in tokenizers)
            errors_before, _ = scheduler_counters(stack)
            shares = [num_cases // num_clients + (i < num_cases % num_clients) for i in range(num_clients)]
            started = time.monotonic()
            watch_url = scheduler_metrics_url(stack) if num_clients == 1 else ""
            with multiprocessing.get_context("spawn").Pool(num_clients) as pool:
                results = pool.starmap(run_cases, [(stack.gateway_http, stack.gateway_grpc, n, seed_value + i,
                                                    watch_url) for i, n in enumerate(shares)])
            elapsed = time.monotonic() - started
            errors_after, _ = scheduler_counters(stack)
            time.sleep(1.0)  # let the allocator return what the last requests freed
            rss_after = sum(resident_bytes(pid) for pid in tokenizers)
        finally:
            stack.stop()
    answers: dict[str, int] = {}
    for got, _, _ in results:
        for answer, count in got.items():
            answers[answer] = answers.get(answer, 0) + count
    problems = [p for _, found, _ in results for p in found]
    reached = [r for _, _, found in results for r in found]
    return {"cases": sum(answers.values()), "seed": seed_value, "clients": num_clients, "seconds": round(elapsed, 1),
            "answers": dict(sorted(answers.items())), "problems": problems[:50], "num_problems": len(problems),
            "scheduler_errors": errors_after - errors_before, "reached_scheduler": reached[:50],
            "stack_args": " ".join(stack_args),
            "tokenizer_rss_mib": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)}}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"{r['cases']:,} cases (seeds from {r['seed']}, {r['clients']} clients, stack `{r['stack_args']}`) in "
             f"{r['seconds']:,.0f} s; cases with a server error or a "
             f"disallowed status: **{r['num_problems']}**; malformed requests that reached the scheduler: "
             f"**{r['scheduler_errors']:.0f}**.", "",
             f"Tokenizers' resident memory: {r['tokenizer_rss_mib']['before']} MiB before, "
             f"{r['tokenizer_rss_mib']['after']} MiB after.", "", "| answer | cases |", "|---|---|"]
    lines += [f"| {answer} | {count:,} |" for answer, count in r["answers"].items()]
    if r["problems"]:
        lines += ["", "First problems:", "", *(f"- `{p}`" for p in r["problems"][:20])]
    if r["reached_scheduler"]:
        lines += ["", "Malformed requests that reached the scheduler (its error count moved during the case):", "",
                  *(f"- `{p}`" for p in r["reached_scheduler"][:20])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=1, help="client processes sending cases at the same time")
    parser.add_argument("--stack-args", default="--num-gateways 1 --num-tokenizers 1",
                        help="extra `flashstream up` arguments")
    parser.add_argument("--name", default="fuzz_api", help="result file name under bench/results")
    args = parser.parse_args(argv)
    result = run(args.cases, args.seed, args.clients, shlex.split(args.stack_args))
    write_results(args.name, result, markdown(result))
    print(markdown(result))
    return 1 if result["num_problems"] or result["scheduler_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
