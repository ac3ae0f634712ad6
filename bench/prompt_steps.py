"""Prompt-heavy steps in-process: whether the host or the device bounds them.

When a burst of requests arrives, the worker's steps hold a full token budget of prompt chunks beside every running
sequence's decode row (about 8,000 prompt tokens and 900 rows on the ShareGPT-like set). Those steps run eagerly
(the piecewise graphs stop at the worker's `--piecewise-max-tokens`), so the host launches every kernel of every
layer. This benchmark plays such steps through the worker's own `Runner` on dummy weights, as the servicer runs
them with the next plan in sight (each step queued behind the one before), and reports per step:

- launch: host time of `ModelRunner.launch` (inputs, metadata, every kernel queued, the sampling queued), no wait;
- step wall: `Runner.step` with the next plan in sight, the rate the worker can sustain;
- launch with the device queue empty: the same host work for a step queued alone behind a sleep kernel, so that no
  launch can wait for room in the device's queue (behind a running step of hundreds of kernels, one may);
- device: that step's own device time, timed between two events (from the sleep's end to its sampling's end), so the
  host's pace does not show in it.

A step whose launch is well under its device time is device-bound: the host has slack to queue it ahead.

    python bench/prompt_steps.py --out-name prompt_steps_h100
    python bench/prompt_steps.py --piecewise-max-tokens 8192    # the same steps under piecewise graphs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import torch  # noqa: E402

from bench.common import RESULTS_DIR, replaced, write_results  # noqa: E402
from bench.engine import Bench  # noqa: E402
from services.common.step import CachedSeqs, StepPlan  # noqa: E402
from services.worker.build import build_engine  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine import WorkerEngine  # noqa: E402

SLEEP_CYCLES = 200_000_000  # about 0.1 s at the H100's clock: longer than any step's launch
ALONE_STEPS = 3  # steps timed alone per repeat


def plans(bench: Bench, ids: list[int], num_steps: int, new_per_step: int, prompt_len: int) -> list[StepPlan]:
    """num_steps plans, each decoding every id in `ids` and starting new_per_step new prompts of prompt_len."""
    out = []
    for _ in range(num_steps):
        bench.step_id += 1
        new = [bench.new_seq(bench.next_seq + j, prompt_len) for j in range(new_per_step)]
        bench.next_seq += new_per_step
        out.append(StepPlan(bench.step_id, new, CachedSeqs.of((i, [], 1) for i in ids), []))
    return out


def overlapped(engine: WorkerEngine, steps: list[StepPlan]) -> tuple[list[float], list[float]]:
    """Runs the plans with the next one in sight; returns each launch's host ms and each step's wall ms."""
    executor = engine.runner.executor
    launches: list[float] = []
    launch = executor.launch

    def timed(scheduled, prev=None):  # noqa: ANN001, ANN202 - ModelRunner.launch's own signature
        start = time.perf_counter()
        out = launch(scheduled, prev)
        launches.append((time.perf_counter() - start) * 1e3)
        return out

    walls = []
    with replaced(executor, "launch", timed):
        for k, plan in enumerate(steps):
            start = time.perf_counter()
            result = engine.runner.step(plan, next_plan=steps[k + 1] if k + 1 < len(steps) else None)
            walls.append((time.perf_counter() - start) * 1e3)
            if result.errors:
                raise RuntimeError(f"step {plan.step_id}: {result.errors[0].error.message}")
    return launches, walls[:-1]  # the last step had no next plan to be queued behind it


def alone(engine: WorkerEngine, plan: StepPlan) -> tuple[float, float]:
    """The plan's step alone, queued behind a sleep that outlasts its launch: the host ms to queue it (the forward
    pass and the sampling) onto a device queue holding nothing else, and its device ms, from the sleep's end to the
    end of its sampling (before the read-back)."""
    sampler = engine.runner.executor.sampler
    sample = sampler.sample
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    queued: list[float] = []  # when the host had queued the step's sampling

    def marked(logits, rows):  # noqa: ANN001, ANN202 - Sampler.sample's own signature
        out = sample(logits, rows)
        end.record()
        queued.append(time.perf_counter())
        return out

    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    begin.record()
    start = time.perf_counter()
    with replaced(sampler, "sample", marked):
        result = engine.runner.step(plan)  # no next plan in sight: launched, sampled and read back in turn
    if result.errors:
        raise RuntimeError(f"step {plan.step_id}: {result.errors[0].error.message}")
    torch.cuda.synchronize()
    return (queued[0] - start) * 1e3, begin.elapsed_time(end)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    max_len = args.context + args.prompt_len + 4 * args.steps * args.repeats + 64
    config = WorkerConfig(model=args.model, load_format="dummy", device="cuda", max_model_len=max_len,
                          max_num_seqs=args.rows + args.new, max_num_batched_tokens=args.max_num_batched_tokens,
                          piecewise_max_tokens=args.piecewise_max_tokens)
    cap = min(config.piecewise_max_tokens, config.max_num_batched_tokens)
    start = time.perf_counter()
    engine = build_engine(config)
    build_s = time.perf_counter() - start
    bench = Bench(engine, max_len)
    ids, _ = bench.prefill(args.rows, args.context)
    launches, walls, queued, devices = [], [], [], []
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        steps = plans(bench, ids, args.steps, args.new, args.prompt_len)
        launch, wall = overlapped(engine, steps)
        bench.finish([new.seq_id for plan in steps for new in plan.new_seqs])
        for single in plans(bench, ids, ALONE_STEPS, args.new, args.prompt_len):
            queue_ms, device = alone(engine, single)
            bench.finish([new.seq_id for new in single.new_seqs])
            if repeat:
                queued.append(queue_ms)
                devices.append(device)
        if repeat:
            launches += launch
            walls += wall
    tokens = args.rows + args.new * args.prompt_len
    return {"model": args.model, "rows": args.rows, "new_prompts": args.new, "prompt_len": args.prompt_len,
            "context": args.context, "tokens_per_step": tokens, "piecewise_max_tokens": cap,
            "piecewise_covers_step": tokens <= cap, "build_s": round(build_s, 1),
            "launch_ms": round(statistics.median(launches), 2), "launch_max_ms": round(max(launches), 2),
            "step_wall_ms": round(statistics.median(walls), 2),
            "launch_alone_ms": round(statistics.median(queued), 2), "device_ms": round(statistics.median(devices), 2),
            "steps_timed": len(walls)}


def table(r: dict[str, Any]) -> str:
    graphs = "piecewise graphs" if r["piecewise_covers_step"] else "eager (past the piecewise graphs)"
    return "\n".join([
        f"Steps of {r['rows']} decode rows (contexts of about {r['context']} tokens) and {r['new_prompts']} new prompts "
        f"of {r['prompt_len']} tokens: {r['tokens_per_step']} tokens a step, {graphs}; piecewise graphs up to "
        f"{r['piecewise_max_tokens']} tokens. Medians over {r['steps_timed']} overlapped steps.",
        "",
        "| model | launch ms (host), behind a running step | launch max ms | step wall ms (next plan in sight) | "
        "launch ms (host), device queue empty | device ms | build s |",
        "|---|---|---|---|---|---|---|",
        f"| {r['model']} | {r['launch_ms']} | {r['launch_max_ms']} | {r['step_wall_ms']} | {r['launch_alone_ms']} | "
        f"{r['device_ms']} | {r['build_s']} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.2-1b", help="a preset, run on dummy weights")
    parser.add_argument("--rows", type=int, default=900, help="running sequences, each decoding a token a step")
    parser.add_argument("--new", type=int, default=24, help="new prompts a step")
    parser.add_argument("--prompt-len", type=int, default=300)
    parser.add_argument("--context", type=int, default=400, help="prompt length of the running sequences")
    parser.add_argument("--steps", type=int, default=12, help="overlapped steps per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--piecewise-max-tokens", type=int, default=WorkerConfig.piecewise_max_tokens,
                        help="the worker's option of that name (default: the worker's, %(default)s)")
    parser.add_argument("--out-name", default="", help="write bench/results/<name>.json and .md")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/prompt_steps.py times device work: it needs a CUDA device")
    results = measure(args)
    if args.out_name:
        print(write_results(args.out_name, results, table(results), Path(args.out_dir)))
    else:
        print(table(results))


if __name__ == "__main__":
    main()
