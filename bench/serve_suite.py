"""The serving benchmark's suites: one launched stack per model/config, every scenario of it, one results file.

  python -m bench.serve_suite --device cpu            # fake worker + demo model, about a minute
  python -m bench.serve_suite --device gpu --out DIR  # the H200 suite (bench/gpu_serve.sh runs it)

Trim a suite by editing the tables below: each STACK row is launched once and runs its scenarios in order.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR
from bench.serve import LaunchedStack, run_scenario, write_results
from bench.serve_client import default_client_procs, run_load
from bench.serve_data import make_model, request_set

GREEDY = {"temperature": 0.0, "ignore_eos": True}
KERNEL_PROFILE_DIR = "/tmp/flashstream-kernel-profile"
# What a stack whose scenarios trace the workers' kernels adds to its launch (a window opens on POST /kernel-profile).
KERNEL_PROFILE_ARGS = f"--worker-args '--kernel-profile-dir {KERNEL_PROFILE_DIR} --kernel-profile-steps 40'"
OPENAI_DEFAULT = {"temperature": 1.0, "top_p": 1.0, "ignore_eos": True}
FP8_ARGS = "--worker-args '--quantization fp8 --kv-cache-dtype fp8'"
FP8_8B, FP8_1B = "8B FP8 weights + FP8 KV", "1B FP8 weights + FP8 KV"
FP8_HEAD_8B = "8B FP8 weights + FP8 KV + FP8 lm_head"
FP8_WEIGHTS_8B, FP8_WEIGHTS_1B = "8B FP8 weights + FP8 lm_head, bf16 KV", "1B FP8 weights + FP8 lm_head, bf16 KV"
FP8_WEIGHTS_ARGS = "--worker-args '--quantization fp8 --quantize-lm-head'"
TWO_IN_FLIGHT = "--scheduler-args '--max-steps-in-flight 2'"  # the default is 3
FOUR_IN_FLIGHT = "--scheduler-args '--max-steps-in-flight 4'"
PIECEWISE_8192 = "--worker-args '--piecewise-max-tokens 8192'"  # the default is 2,048
FP8_BASELINE_8B, FP8_BASELINE_1B = "8B FP8 baseline, bf16", "1B FP8 baseline, bf16"


@dataclass(frozen=True)
class Scenario:
    name: str
    dataset: str  # "sharegpt" or "fixed"
    num_requests: int
    concurrency: int = 0  # 0: all at once
    input_len: int = 0
    output_len: int = 0
    sampling: dict = field(default_factory=lambda: dict(GREEDY))
    profile: bool = False  # also sample every stage with py-spy while it runs (bench/stage_profile.py)
    profile_s: float = 15.0  # for this long, from 2 s into the load
    kernel_profile: bool = False  # also trace a window of the workers' steps (the stack needs KERNEL_PROFILE_ARGS)
    kernel_profile_after_s: float = 4.0  # the window opens this long into the load
    seed: int = 0  # of the request set: scenarios of one stack that compare should not share prompts (prefix cache)


@dataclass(frozen=True)
class StackRun:
    model: str  # a preset (make-model folder) or "demo" (the demo model, real weights)
    launch: str  # extra `flashstream up` args
    scenarios: tuple[Scenario, ...]


def budget_stacks(name: str, worker_args: str, budgets: tuple[int, ...]) -> tuple[StackRun, ...]:
    """The 8B (`name` begins its scenarios' names; `worker_args` precede the budget) at other step token budgets,
    the scheduler's and the worker's: 1,024 in / 128 out at 64 concurrent and the ShareGPT-like set at each."""
    return tuple(
        StackRun("llama-3.1-8b", f"--load-format dummy --device cuda --scheduler-args '--max-num-batched-tokens {n}' "
                                 f"--worker-args '{worker_args}--max-num-batched-tokens {n}'", (
            Scenario(f"{name} 1024 in / 128 out, 64 concurrent, 256 requests, {n} tokens per step", "fixed", 256, 64,
                     1024, 128, seed=2),
            Scenario(f"{name} ShareGPT 1000 at once, greedy, {n} tokens per step", "sharegpt", 1000),
        )) for n in budgets)


# In order of importance: a run that reaches its deadline skips what is left (and says so in the results).
GPU_SUITE = (
    StackRun("llama-3.1-8b", f"--load-format dummy --device cuda {KERNEL_PROFILE_ARGS}", (
        Scenario("8B batch-1 idle TTFT, 128 in / 1 out", "fixed", 16, 1, 128, 1),
        Scenario("8B batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256),
        Scenario("8B ShareGPT 1000 at once, greedy", "sharegpt", 1000, profile=True),
        Scenario("8B ShareGPT 1000 at once, temperature 1 top_p 1", "sharegpt", 1000, sampling=OPENAI_DEFAULT, seed=1),
        Scenario("8B 1024 in / 128 out, 64 concurrent, 256 requests", "fixed", 256, 64, 1024, 128, seed=2),
        # Last, since tracing slows the steps it traces: where the device time of a saturated run goes.
        # 9 s in: the decode steps of the full batch, once every prompt has been prefilled.
        Scenario("8B ShareGPT 1000 at once, kernels traced, greedy", "sharegpt", 1000, kernel_profile=True,
                 kernel_profile_after_s=9.0, seed=3),
        # 2.5 s in: the steps that hold prompt chunks (about 7,500 prompt tokens each, run eagerly).
        Scenario("8B ShareGPT 1000 at once, kernels traced among prompt steps, greedy", "sharegpt", 1000,
                 kernel_profile=True, kernel_profile_after_s=2.5, seed=4),
        # 17 s in: the tail, where the longest outputs decode in steps of a few dozen rows over long contexts.
        Scenario("8B ShareGPT 1000 at once, kernels traced in the tail, greedy", "sharegpt", 1000,
                 kernel_profile=True, kernel_profile_after_s=17.0, seed=5),
    )),
    StackRun("llama-3.1-8b", "--load-format fake --device cpu", (
        Scenario("fake worker, ShareGPT 1000 at once (client + control-plane ceiling)", "sharegpt", 1000),)),
    StackRun("llama-3.2-1b", "--load-format dummy --device cuda", (
        Scenario("1B ShareGPT 1000 at once, greedy", "sharegpt", 1000),
        Scenario("1B 1024 in / 128 out, 64 concurrent, 256 requests", "fixed", 256, 64, 1024, 128),
        # Where the stages' time goes while the 1B's device waits for them (its run is short: 5 s of it).
        Scenario("1B ShareGPT 1000 at once, greedy, stages profiled", "sharegpt", 1000, profile=True, profile_s=5.0,
                 seed=3),
    )),
    # Continuous against static batching under the same limit of 256 sequences per step.
    StackRun("llama-3.2-1b",
             "--load-format dummy --device cuda --scheduler-args '--policy static --max-num-seqs 256'", (
        Scenario("1B ShareGPT 1000 at once, static, 256 per step", "sharegpt", 1000),)),
    StackRun("llama-3.2-1b", "--load-format dummy --device cuda --scheduler-args '--max-num-seqs 256'", (
        Scenario("1B ShareGPT 1000 at once, continuous, 256 per step", "sharegpt", 1000),)),
    # The same with a request admitted at every freed seat: each admission makes a step mix a prompt into the rows.
    StackRun("llama-3.2-1b",
             "--load-format dummy --device cuda --scheduler-args '--max-num-seqs 256 --admit-batch 1'", (
        Scenario("1B ShareGPT 1000 at once, continuous, 256 per step, admit batch 1", "sharegpt", 1000),)),
    # Where the continuous run's time goes: its steps that mix a prompt chunk into the decode rows leave the device
    # waiting (the stages' CPU samples, then a window of the worker's steps with the gaps between device operations).
    StackRun("llama-3.2-1b",
             f"--load-format dummy --device cuda --scheduler-args '--max-num-seqs 256' {KERNEL_PROFILE_ARGS}", (
        Scenario("1B ShareGPT 1000 at once, continuous, 256 per step, stages profiled", "sharegpt", 1000,
                 profile=True, profile_s=5.0, seed=3),
        # 2 s in: the middle of the run, where decode steps of 256 rows leave the device waiting inside them.
        Scenario("1B ShareGPT 1000 at once, continuous, 256 per step, kernels traced", "sharegpt", 1000,
                 kernel_profile=True, kernel_profile_after_s=2.0, seed=5),)),
    # Where the 1B's device waits at the default 1,024 seats: its first tenths, whose steps hold prompt chunks
    # (about 8,000 prompt tokens each beside the decode rows), read far less busy than its decode tenths.
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {KERNEL_PROFILE_ARGS}", (
        Scenario("1B ShareGPT 1000 at once, kernels traced among prompt steps, greedy", "sharegpt", 1000,
                 kernel_profile=True, kernel_profile_after_s=0.3, seed=4),
        Scenario("1B ShareGPT 1000 at once, kernels traced, greedy", "sharegpt", 1000, kernel_profile=True,
                 kernel_profile_after_s=2.0, seed=5),)),
    # The 1B's prompt-heavy first steps under piecewise graphs over the whole step budget: a third of their host
    # launch for 5% more device time in-process (`prompt_steps_h100.md`); whether that wins where the host is slow.
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {PIECEWISE_8192}", (
        Scenario("1B ShareGPT 1000 at once, greedy, piecewise graphs to 8192 tokens", "sharegpt", 1000),)),
    # The same for the 8B, whose prompt steps are the device's: what the padding to the graphs' buckets and the pieces'
    # boundaries cost it, beside its default stack's rows in the same call.
    StackRun("llama-3.1-8b", f"--load-format dummy --device cuda {PIECEWISE_8192}", (
        Scenario("8B ShareGPT 1000 at once, greedy, piecewise graphs to 8192 tokens", "sharegpt", 1000),
        Scenario("8B 1024 in / 128 out, 64 concurrent, 256 requests, piecewise graphs to 8192 tokens", "fixed", 256,
                 64, 1024, 128, seed=2),)),
    # The default's greedy rows again with one plan fewer in flight: what the scheduler's round trip costs them.
    StackRun("llama-3.1-8b", f"--load-format dummy --device cuda {TWO_IN_FLIGHT}", (
        Scenario("8B ShareGPT 1000 at once, greedy, 2 steps in flight", "sharegpt", 1000),)),
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {TWO_IN_FLIGHT}", (
        Scenario("1B ShareGPT 1000 at once, greedy, 2 steps in flight", "sharegpt", 1000),)),
    # And with one plan more: whether the next plan reaching the worker after the device has run dry is what leaves
    # the 1B's device waiting (the step table's plan wait), at 1,024 seats and at 256.
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {FOUR_IN_FLIGHT}", (
        Scenario("1B ShareGPT 1000 at once, greedy, 4 steps in flight", "sharegpt", 1000),)),
    StackRun("llama-3.2-1b",
             "--load-format dummy --device cuda --scheduler-args '--max-num-seqs 256 --max-steps-in-flight 4'", (
        Scenario("1B ShareGPT 1000 at once, continuous, 256 per step, 4 steps in flight", "sharegpt", 1000),)),
    # The step's token budget (default 8,192): smaller budgets spread prompts over more steps, so decode rows ride
    # along with prompt chunks instead of running in decode-only steps; larger ones prefill in fewer, longer steps.
    *budget_stacks("8B", "", (2048, 16384)),
    *budget_stacks(f"{FP8_8B},", "--quantization fp8 --kv-cache-dtype fp8 ", (2048, 4096)),
    # FP8 where it pays at these loads, the cache in bf16: an FP8 cache doubles the tokens held, which 64 sequences
    # do not need, and its attention reads are slower per byte than bf16's.
    StackRun("llama-3.1-8b", f"--load-format dummy --device cuda {FP8_WEIGHTS_ARGS}", (
        Scenario(f"{FP8_WEIGHTS_8B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),
        Scenario(f"{FP8_WEIGHTS_8B}, 1024 in / 128 out, 64 concurrent", "fixed", 256, 64, 1024, 128, seed=5),)),
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {FP8_WEIGHTS_ARGS}", (
        Scenario(f"{FP8_WEIGHTS_1B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),)),
    # Batch 1 with one plan fewer in flight: the scheduler's round trip back on the worker's critical path.
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {FP8_WEIGHTS_ARGS} {TWO_IN_FLIGHT}", (
        Scenario(f"{FP8_WEIGHTS_1B}, batch-1, 2 steps in flight, 128 in / 256 out", "fixed", 6, 1, 128, 256,
                 seed=4),)),
    # And with one more: whether the next plan reaching the worker late still bounds the 1B at batch 1.
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {FP8_WEIGHTS_ARGS} {FOUR_IN_FLIGHT}", (
        Scenario(f"{FP8_WEIGHTS_1B}, batch-1, 4 steps in flight, 128 in / 256 out", "fixed", 6, 1, 128, 256,
                 seed=4),)),
    # FP8 weights and an FP8 KV cache against bf16, every row named "8B FP8 ..." or "1B FP8 ...", the bf16 baseline
    # included, so that --scenarios FP8 runs the comparison in one call; new request sets (the prefix cache).
    StackRun("llama-3.1-8b", "--load-format dummy --device cuda", (
        Scenario(f"{FP8_BASELINE_8B}, idle TTFT, 128 in / 1 out", "fixed", 16, 1, 128, 1, seed=4),
        Scenario(f"{FP8_BASELINE_8B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),
        Scenario(f"{FP8_BASELINE_8B}, ShareGPT 1000 at once, greedy", "sharegpt", 1000, seed=4),
        Scenario(f"{FP8_BASELINE_8B}, 1024 in / 128 out, 64 concurrent", "fixed", 256, 64, 1024, 128, seed=5),
    )),
    StackRun("llama-3.1-8b", f"--load-format dummy --device cuda {FP8_ARGS}", (
        Scenario(f"{FP8_8B}, idle TTFT, 128 in / 1 out", "fixed", 16, 1, 128, 1, seed=4),
        Scenario(f"{FP8_8B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),
        Scenario(f"{FP8_8B}, ShareGPT 1000 at once, greedy", "sharegpt", 1000, seed=4),
        Scenario(f"{FP8_8B}, 1024 in / 128 out, 64 concurrent", "fixed", 256, 64, 1024, 128, seed=5),
    )),
    # What mutual TLS between the stages costs an idle request: "8B FP8 baseline, bf16, idle TTFT" has it on.
    StackRun("llama-3.1-8b", "--load-format dummy --device cuda --no-internal-tls", (
        Scenario("8B idle TTFT, 128 in / 1 out, internal TLS off", "fixed", 16, 1, 128, 1, seed=4),)),
    StackRun("llama-3.2-1b", "--load-format dummy --device cuda", (
        Scenario(f"{FP8_BASELINE_1B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),)),
    StackRun("llama-3.2-1b", f"--load-format dummy --device cuda {FP8_ARGS}", (
        Scenario(f"{FP8_1B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),)),
    # The output projection in FP8 too (opt-in: it changes the logits more than the layers do): batch 1 reads it
    # once per token, a sixteenth of the 8B's bytes.
    StackRun("llama-3.1-8b", "--load-format dummy --device cuda "
                             "--worker-args '--quantization fp8 --kv-cache-dtype fp8 --quantize-lm-head'", (
        Scenario(f"{FP8_HEAD_8B}, batch-1, 128 in / 256 out", "fixed", 6, 1, 128, 256, seed=4),)),
)

CPU_SUITE = (
    StackRun("llama-3.2-1b", "--load-format fake --device cpu", (
        Scenario("fake worker, ShareGPT 200 at once (client + control-plane ceiling)", "sharegpt", 200),
        Scenario("fake worker, 128 in / 64 out, 32 concurrent, 200 requests", "fixed", 200, 32, 128, 64),
    )),
    StackRun("demo", "--device cpu", (
        Scenario("demo model batch-1, 32 in / 16 out", "fixed", 4, 1, 32, 16),
        Scenario("demo model, 32 in / 16 out, 16 at once", "fixed", 16, 0, 32, 16),
    )),
)


def model_folder(model: str, cache: Path) -> Path:
    if model == "demo":
        from services.demo import build_demo_model

        return Path(build_demo_model())
    folder = cache / model
    if not (folder / "tokenizer.json").exists():
        make_model(model, folder)
    return folder


def warm_up(base_url: str, folder: Path, procs: int) -> None:
    """A few short requests first, so one-off start-up costs (compilation, first allocations) stay out."""
    specs = request_set(folder, 8, 99, "fixed", 16, 8)
    run_load(base_url, "", specs, [0.0] * len(specs), len(specs), dict(GREEDY), min(procs, 2))


def select(suite: tuple[StackRun, ...], names: list[str]) -> tuple[StackRun, ...]:
    """The stacks and scenarios whose scenario name contains one of `names` (every one when names is empty); a name
    ending in `$` matches only the scenario of exactly that name."""
    if not names:
        return suite

    def chosen(name: str) -> bool:
        return any(name == n[:-1] if n.endswith("$") else n in name for n in names)

    runs = []
    for run in suite:
        kept = tuple(sc for sc in run.scenarios if chosen(sc.name))
        if kept:
            runs.append(StackRun(run.model, run.launch, kept))
    return tuple(runs)


def run_suite(suite: tuple[StackRun, ...], out: Path, cache: Path, procs: int, log_dir: Path | None,
              deadline_s: float = float("inf")) -> None:
    """Runs every stack and scenario in order, writing the results after each scenario; past deadline_s (from the
    start) nothing new is begun and the rest is listed as skipped."""
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    profiles: dict[str, dict] = {}  # the profiled scenarios' stage reports, by name
    traces: dict[str, dict] = {}  # the traced scenarios' kernel summaries, by name
    started = time.monotonic()

    def save() -> None:
        write_results(out, results, {"ratios": ratios(results), "skipped": skipped})

    for i, run in enumerate(suite):
        if time.monotonic() - started > deadline_s:
            skipped += [sc.name for sc in run.scenarios]
            continue
        folder = model_folder(run.model, cache)
        stack = LaunchedStack(str(folder.resolve()), run.launch, log_dir / f"stack{i}" if log_dir else None)
        try:
            t = time.monotonic()
            stack.wait_ready(600)
            print(f"[{time.monotonic() - started:.0f} s] stack {run.model} {run.launch!r} ready in "
                  f"{time.monotonic() - t:.0f} s", flush=True)
            warm_up(stack.base_url, folder, procs)
            for sc in run.scenarios:
                if time.monotonic() - started > deadline_s:
                    skipped.append(sc.name)
                    continue
                profiler = (start_profile(out, stack.proc.pid, sc.name, profiles, sc.profile_s)
                            if sc.profile else None)
                workers = [url for name, url in stack.metric_urls().items() if name.startswith("worker")]
                kernels, on_start = (start_kernel_profile(out, workers, sc.name, traces, sc.kernel_profile_after_s)
                                     if sc.kernel_profile else (None, None))
                res = run_scenario(sc.name, stack.base_url, folder, stack.metric_urls(), dataset=sc.dataset,
                                   num_requests=sc.num_requests, input_len=sc.input_len, output_len=sc.output_len,
                                   concurrency=sc.concurrency, rate=float("inf"), seed=sc.seed, sampling=sc.sampling,
                                   client_procs=procs, slo_ttft_s=1.0, slo_tpot_s=0.05,
                                   stage_pids=stack.stage_pids(), on_start=on_start)
                for thread in (profiler, kernels):
                    if thread is not None:
                        thread.join()
                res.update(model=run.model, launch=run.launch)
                results.append(res)
                r = res["result"]
                print(f"[{time.monotonic() - started:.0f} s] {sc.name}: {r['output_throughput']:.0f} tok/s, "
                      f"{r['failed']} failed", flush=True)
                save()
        finally:
            stack.stop()
    save()


def start_profile(out: Path, parent: int, scenario: str, profiles: dict[str, dict], seconds: float = 15.0
                  ) -> threading.Thread:
    """Samples the stack's stages from 2 s into the load, in the background; adds the scenario's report to
    `profiles` (the run's, by scenario) and writes them all to <out>_profile.md/json, a section each."""
    from bench.stage_profile import profile, to_markdown

    def record() -> None:
        time.sleep(2.0)
        try:
            report = profile(seconds, 50, parent)
        except (OSError, SystemExit) as exc:  # py-spy missing or not allowed to attach: the run goes on without
            print(f"stage profile skipped: {exc}", file=sys.stderr)
            return
        profile_out = out.with_name(out.name + "_profile")
        profiles[scenario] = {"seconds": seconds, "stages": report}
        profile_out.with_suffix(".json").write_text(json.dumps(profiles, indent=1) + "\n")
        sections = [f"## {name}\n\n{to_markdown(r['stages'], r['seconds'])}" for name, r in profiles.items()]
        profile_out.with_suffix(".md").write_text("# Stage profile under load\n\n" + "\n".join(sections))

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def ask_kernel_profile(status_url: str) -> str:
    """POSTs /kernel-profile to a worker's status port (its /metrics URL's host and port); returns the answer's body,
    or why there was none."""
    url = status_url.rsplit("/", 1)[0] + "/kernel-profile"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as exc:
        return f"{exc.code}: {exc.read().decode()}"
    except OSError as exc:
        return f"no answer: {exc}"


def start_kernel_profile(out: Path, worker_urls: list[str], scenario: str, kernels: dict[str, dict],
                         after_s: float = 4.0, wait_s: float = 60.0) -> tuple[threading.Thread, Callable[[float], None]]:
    """Opens a kernel profile window in every worker (their /metrics URLs) `after_s` after the load's start, then adds
    the first worker's summary to `kernels` (the run's, by scenario) and writes them all to <out>_kernels.json/txt, a
    section each. Returns the thread and the callback that tells it the load's starting instant (run_scenario's
    on_start)."""
    started: queue.Queue[float] = queue.Queue()

    def record() -> None:
        try:
            t0 = started.get(timeout=120)
        except queue.Empty:
            return
        time.sleep(max(0.0, t0 + after_s - time.time()))
        summary = Path(KERNEL_PROFILE_DIR) / "worker_kernels.json"
        summary.unlink(missing_ok=True)
        answers = {url: ask_kernel_profile(url) for url in worker_urls}
        print(f"kernel profile asked {time.time() - t0:.1f} s into the load: {answers}", file=sys.stderr)
        deadline = time.monotonic() + wait_s
        while worker_urls and not summary.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(0.5)  # the text file is written right after the JSON
        if not summary.exists():
            print("kernel profile not written (no worker, or the window did not close)", file=sys.stderr)
            return
        text = summary.with_suffix(".txt")
        kernels[scenario] = {"after_s": after_s, "summary": json.loads(summary.read_text()),
                             "text": text.read_text() if text.exists() else ""}
        kernels_out = out.with_name(out.name + "_kernels")
        kernels_out.with_suffix(".json").write_text(json.dumps({k: {"after_s": v["after_s"], **v["summary"]}
                                                                for k, v in kernels.items()}, indent=1) + "\n")
        kernels_out.with_suffix(".txt").write_text("".join(f"== {k} (window opened {v['after_s']:.0f} s into the "
                                                           f"load)\n{v['text']}\n" for k, v in kernels.items()))

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread, started.put


def ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Continuous over static, admitting 8 at a time over 1, OpenAI-default over greedy, three steps in flight over two
    (and four over three at 256 seats), piecewise graphs to 8,192 tokens over 2,048 and FP8 over bf16: output
    throughput, where both ran."""
    tput = {r["name"]: r["result"]["output_throughput"] for r in results}

    def ratio(a: str, b: str) -> float | None:
        return tput[a] / tput[b] if a in tput and b in tput and tput[b] else None

    return {"continuous_over_static": ratio("1B ShareGPT 1000 at once, continuous, 256 per step",
                                            "1B ShareGPT 1000 at once, static, 256 per step"),
            "admit_batch_8_over_1": ratio("1B ShareGPT 1000 at once, continuous, 256 per step",
                                          "1B ShareGPT 1000 at once, continuous, 256 per step, admit batch 1"),
            "default_sampling_over_greedy": ratio("8B ShareGPT 1000 at once, temperature 1 top_p 1",
                                                  "8B ShareGPT 1000 at once, greedy"),
            "8b_three_in_flight_over_two": ratio("8B ShareGPT 1000 at once, greedy",
                                                 "8B ShareGPT 1000 at once, greedy, 2 steps in flight"),
            "1b_three_in_flight_over_two": ratio("1B ShareGPT 1000 at once, greedy",
                                                 "1B ShareGPT 1000 at once, greedy, 2 steps in flight"),
            "1b_piecewise_8192_over_2048": ratio("1B ShareGPT 1000 at once, greedy, piecewise graphs to 8192 tokens",
                                                 "1B ShareGPT 1000 at once, greedy"),
            "8b_piecewise_8192_over_2048": ratio("8B ShareGPT 1000 at once, greedy, piecewise graphs to 8192 tokens",
                                                 "8B ShareGPT 1000 at once, greedy"),
            "8b_1024_128_piecewise_8192_over_2048": ratio(
                "8B 1024 in / 128 out, 64 concurrent, 256 requests, piecewise graphs to 8192 tokens",
                "8B 1024 in / 128 out, 64 concurrent, 256 requests"),
            "1b_256_seats_four_in_flight_over_three": ratio(
                "1B ShareGPT 1000 at once, continuous, 256 per step, 4 steps in flight",
                "1B ShareGPT 1000 at once, continuous, 256 per step"),
            "8b_fp8_over_bf16_sharegpt": ratio(f"{FP8_8B}, ShareGPT 1000 at once, greedy",
                                               f"{FP8_BASELINE_8B}, ShareGPT 1000 at once, greedy")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), required=True)
    p.add_argument("--out", default=None, help="results path without suffix (default bench/results/serve_<device>)")
    p.add_argument("--cache", default="/tmp/flashstream-bench-models", help="where model folders are made")
    p.add_argument("--client-procs", type=int, default=default_client_procs())
    p.add_argument("--log-dir", default=None)
    p.add_argument("--deadline-s", type=float, default=float("inf"),
                   help="begin nothing new after this many seconds (the rest is listed as skipped)")
    p.add_argument("--scenarios", default="", help="parts of scenario names to run, separated by semicolons (names "
                   "hold commas; default: all); a part ending in $ is a whole name")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out) if args.out else RESULTS_DIR / f"serve_{args.device}"
    suite = select(GPU_SUITE if args.device == "gpu" else CPU_SUITE, [n for n in args.scenarios.split(";") if n])
    run_suite(suite, out, Path(args.cache), args.client_procs, Path(args.log_dir) if args.log_dir else None,
              args.deadline_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
