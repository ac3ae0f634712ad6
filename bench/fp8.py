"""FP8 benchmark: bf16 against FP8 weights and FP8 weights + FP8 KV cache (or + FP8 lm_head, --variants), measured
in one run, then the FP8 tests.

For each model (dummy weights of a preset) and variant: the KV capacity in tokens at the same memory budget, the
batch-1 and batch-64 decode step (host wall-clock per Runner.step and the decode graph's replay alone), prefill
tokens/s, and the logits of a fixed prompt set against the bf16 variant (cosine, top-1, KL). Beside them, at the
first model's shapes: the projections alone (bf16 F.linear, the per-token FP8 tensor-core GEMM, the dequantising
FP8 kernel and the split-K FP8 GEMV at several row counts; bench/fp8_projections.py) and decode attention on a bf16
cache against the same entries in an FP8 cache (output error and time; bench/fp8_attention.py). Last, the gpu-marked
FP8 tests, compiled.
Results are written after each part. --sweep-rows runs the projections alone instead, for every model, with the
GEMV in each of its candidate configs (which one wins at each row count, and where _scaled_mm starts winning).

    python bench/fp8.py --out-dir "$OUT"          # H200: llama-3.1-8b and llama-3.2-1b, about 3 minutes
    python bench/fp8.py --sweep-rows 1,2,4,8,16 --no-tests --out-name fp8_gemv_sweep_h200 --out-dir "$OUT"
    python bench/fp8.py --models /path/to/tiny --device cpu --no-tests --batch-sizes 1,4 --prefill-len 32 \
        --prompt-len 16 --decode-steps 4 --max-num-batched-tokens 64 --max-model-len 256 \
        --out-dir /tmp/fp8   # a rehearsal on the CPU
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import torch  # noqa: E402

import kernels.dependent_launch  # noqa: E402
import kernels.fp8_linear  # noqa: E402
from bench.common import RESULTS_DIR, write_results  # noqa: E402
from bench.engine import Bench, graph_replay_ms, graph_us, kernel_breakdown  # noqa: E402
from bench.fp8_accuracy import fixed_prompts, last_logits, logit_agreement  # noqa: E402
from bench.fp8_attention import attention_markdown, attention_probe  # noqa: E402
from bench.fp8_projections import projection_sweep, projections_markdown  # noqa: E402
from services.worker.build import build_engine, resolve_model_config  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.model_config import ModelConfig  # noqa: E402

FP8_TESTS = ["tests/kernels/test_fp8_linear.py", "tests/kernels/test_fp8_gemv.py",
             "tests/kernels/test_fp8_kv_cache.py", "tests/unit/worker/test_fp8_weights.py",
             "tests/unit/worker/test_fp8_kv_cache.py"]
# name → (quantization, kv_cache_dtype, quantize_lm_head)
VARIANTS = {"bf16": ("", "auto", False), "fp8 weights": ("fp8", "auto", False),
            "fp8 weights + fp8 KV": ("fp8", "fp8", False), "fp8 weights + fp8 lm_head": ("fp8", "auto", True)}
# Issue 22's batch-1 inter-token latency goals with FP8 weights (ms), beside which the decode step is printed.
ITL_GOALS_MS = {"llama-3.1-8b": 2.6, "llama-3.2-1b": 0.9}


def run_tests(out_dir: Path, timeout_s: int) -> dict[str, Any]:
    """The gpu-marked FP8 tests (kernels compiled, the worker on CUDA); the log goes to out_dir/fp8_gpu_tests.txt."""
    tests = [t for t in FP8_TESTS if (ROOT / t).is_file()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rA", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        log, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        log, code = f"{_text(exc.stdout)}{_text(exc.stderr)}\ntimed out after {timeout_s} s", -1
    (out_dir / "fp8_gpu_tests.txt").write_text(log)
    summary = next((line for line in reversed(log.splitlines()) if " in " in line and "=" in line), log[-200:])
    return {"command": "python -m pytest -q -m gpu " + " ".join(tests), "exit_code": code,
            "summary": summary.strip("= "), "seconds": round(time.perf_counter() - start, 1)}


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 3)


def _free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prefill_seqs(args: argparse.Namespace) -> int:
    """Sequences of one prefill step (the engine is sized for them as for the decode batches)."""
    return max(1, args.max_num_batched_tokens // args.prefill_len)


def measure_variant(args: argparse.Namespace, model: str, quantization: str, kv_cache_dtype: str,
                    quantize_lm_head: bool, prompts: list[list[int]]) -> tuple[dict[str, Any], torch.Tensor]:
    """The figures of one variant, and its logits of `prompts`."""
    max_len = args.prompt_len + 3 * args.decode_steps + 32
    config = WorkerConfig(model=model, load_format="dummy", device=args.device, quantization=quantization,
                          kv_cache_dtype=kv_cache_dtype, quantize_lm_head=quantize_lm_head,
                          max_model_len=max(args.max_model_len, max_len),
                          max_num_seqs=max(*args.batch_sizes, _prefill_seqs(args)),
                          max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager)
    start = time.perf_counter()
    engine = build_engine(config)
    info = engine.info
    bench = Bench(engine, max(max_len, args.prefill_len))
    out: dict[str, Any] = {
        "build_s": round(time.perf_counter() - start, 1), "dtype": info.dtype, "weight_bytes": bench.weight_bytes,
        "kv_cache_dtype": str(engine.runner.executor.kv_cache.data.dtype).removeprefix("torch."),
        "num_kv_blocks": info.num_kv_blocks, "kv_capacity_tokens": info.num_kv_blocks * info.block_size,
        "decode": [],
    }
    for batch in args.batch_sizes:
        ids, _ = bench.prefill(batch, args.prompt_len)
        bench.decode(ids, 4)  # warm-up (and graph selection)
        times = bench.decode(ids, args.decode_steps)
        row = {"batch": batch, "step_ms": _median_ms(times), "tokens_per_s": round(batch / statistics.median(times))}
        replay = graph_replay_ms(engine, args.decode_steps) if info.device.startswith("cuda") else None
        if replay is not None:
            row["graph_replay_ms"] = round(replay, 3)
        if args.profile and batch == args.batch_sizes[0] and info.device.startswith("cuda"):
            # Kernel time alone: the step's replay minus this is what the launches between kernels cost.
            row["kernels"] = kernel_breakdown(lambda: bench.decode(ids, args.decode_steps), args.decode_steps)
        out["decode"].append(row)
        bench.finish(ids)
    batch = _prefill_seqs(args)
    bench.finish(bench.prefill(batch, args.prefill_len)[0])  # warm-up
    rates = []
    for _ in range(args.prefill_repeats):
        ids, rate = bench.prefill(batch, args.prefill_len)
        rates.append(rate)
        bench.finish(ids)
    out["prefill"] = {"prompt_len": args.prefill_len, "seqs_per_step": batch, "tokens_per_s": round(max(rates))}
    logits = last_logits(engine, prompts)
    del bench, engine
    _free_device_memory()
    return out, logits


def measure_model(args: argparse.Namespace, model: str, cfg: ModelConfig) -> dict[str, Any]:
    """Every variant of one model; the first (bf16) is the reference of the others' logits."""
    variants: dict[str, Any] = {}
    reference = None
    prompts = fixed_prompts(cfg.vocab_size)
    for name in args.variants.split(","):
        print(f"{model} {name}", flush=True)
        try:
            figures, logits = measure_variant(args, model, *VARIANTS[name], prompts)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' figures
            variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {variants[name]['error']}", flush=True)
            _free_device_memory()
            continue
        if reference is None:
            reference = logits
            figures["reference"] = True
        else:
            figures["accuracy"] = logit_agreement(reference, logits)
        variants[name] = figures
        print(f"  {figures}", flush=True)
    return variants


def _models_markdown(model: str, variants: dict[str, Any]) -> list[str]:
    batches = sorted({d["batch"] for v in variants.values() if "decode" in v for d in v["decode"]})
    lines = [f"## {model}", ""]
    goal = ITL_GOALS_MS.get(model)
    if goal:
        lines += [f"Issue 22's batch-1 ITL goal with FP8 weights: {goal} ms (served end to end; the engine's step "
                  "below is its lower part).", ""]
    lines += ["| variant | model dtype | weights read per step (GB) | KV cache | KV capacity (tokens) | "
              + " | ".join(f"decode b{b} step / replay (ms)" for b in batches)
              + " | prefill tok/s | cosine min / mean vs bf16 | top-1 | KL mean / max |",
              "|---|---|---|---|---|" + "---|" * len(batches) + "---|---|---|---|"]
    base = next((v for v in variants.values() if v.get("reference")), None)
    for name, v in variants.items():
        if "error" in v:
            lines.append(f"| {name} | error: {v['error']} |")
            continue
        steps = {d["batch"]: f"{d['step_ms']} / {d.get('graph_replay_ms', '-')}" for d in v["decode"]}
        acc = v.get("accuracy", {})
        capacity = f"{v['kv_capacity_tokens']}"
        if base is not None and v is not base:
            capacity += f" ({v['kv_capacity_tokens'] / base['kv_capacity_tokens']:.2f}x)"
        lines.append(
            f"| {name} | {v['dtype']} | {v['weight_bytes'] / 1e9:.3g} | {v['kv_cache_dtype']} | {capacity} | "
            + " | ".join(steps.get(b, "-") for b in batches)
            + f" | {v['prefill']['tokens_per_s']} | {acc.get('cosine_min', '-')} / {acc.get('cosine_mean', '-')} | "
            f"{acc.get('top1_agreement', '-')} | {acc.get('kl_mean', '-')} / {acc.get('kl_max', '-')} |")
    lines.append("")
    for name, v in variants.items():
        for d in v.get("decode", []):
            if "kernels" in d:
                lines += _kernels_markdown(f"{name}, batch {d['batch']}", d["kernels"], d.get("graph_replay_ms"))
    return lines


def _kernels_markdown(what: str, k: dict[str, Any], replay_ms: float | None) -> list[str]:
    gap = f"; the graph's replay {replay_ms} ms" if replay_ms is not None else ""
    parts = ", ".join(f"{part} {ms}" for part, ms in k["parts_ms_per_step"].items())
    lines = [f"{what}: kernels {k['device_ms_per_step']} ms per step{gap}. By part (ms): {parts}.", ""]
    lines += [f"- {t['ms_per_step']} ms, {t['calls_per_step']}x `{t['name']}`" for t in k["top_kernels"]]
    return lines + [""]


def to_markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for model, variants in results["models"].items():
        lines += _models_markdown(model, variants)
    if results.get("projections"):
        lines += [f"## Projections alone ({', '.join(results['projections']['models'])})", ""]
        lines += projections_markdown(results["projections"])
    if results.get("attention"):
        lines += attention_markdown(results["probe_model"], results["attention"])
    for key in ("projections_error", "attention_error"):
        if key in results:
            lines += [f"{key}: {results[key]}", ""]
    if "tests" in results:
        t = results["tests"]
        lines += [f"GPU tests (`{t['command']}`, fp8_gpu_tests.txt): {t['summary']} (exit {t['exit_code']}, "
                  f"{t['seconds']} s)", ""]
    lines.append(f"Wall time of the run: {results['wall_s']} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.1-8b,llama-3.2-1b", help="presets or checkpoint folders (dummy "
                        "weights); the first also gives the probes' shapes")
    parser.add_argument("--variants", default=",".join(list(VARIANTS)[:3]),
                        help=f"any of {', '.join(VARIANTS)}, the reference first (default: the first three)")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--prefill-len", type=int, default=1024)
    parser.add_argument("--prefill-repeats", type=int, default=2)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked FP8 tests")
    parser.add_argument("--gemv-max-rows", type=int, default=0,
                        help="send up to this many rows through the split-K GEMV instead of kernels.fp8_linear's "
                        "GEMV_MAX_ROWS (an experiment: the decode steps of the row counts between the two)")
    parser.add_argument("--fp8-products-max-rows", type=int, default=0,
                        help="send rows past the GEMV's limit and up to this many through the split-K kernel on FP8 "
                        "products instead of _scaled_mm (an experiment, as --gemv-max-rows)")
    parser.add_argument("--no-dependent-launch", action="store_true",
                        help="launch the projection, norm, activation and rotary kernels the ordinary way, not as "
                        "programmatic dependents (kernels/dependent_launch.py), to compare")
    parser.add_argument("--profile", action="store_true",
                        help="the first batch size's decode step by part of the step and its largest kernels")
    parser.add_argument("--tests-timeout", type=int, default=150)
    parser.add_argument("--probe-rows", default="1,4,8,16,32,64,512",
                        help="row counts of the projection probe ('' skips)")
    parser.add_argument("--sweep-rows", default="", help="row counts: time only the projections of every model, "
                        "the GEMV in each candidate config (needs a CUDA GPU)")
    parser.add_argument("--attention-cases", default="1x4096,64x1024,64x4096",
                        help="BATCHxCONTEXT cases of the attention probe ('' skips)")
    parser.add_argument("--out-name", default="fp8_h200")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"models": {}, "args": {k: v for k, v in vars(args).items() if k != "out_dir"}}

    def save() -> None:
        results["wall_s"] = round(time.perf_counter() - start, 1)
        write_results(args.out_name, results, to_markdown(results), out_dir)

    apply_switches(args)
    models = args.models.split(",")
    configs = {m: resolve_model_config(WorkerConfig(model=m, load_format="dummy"))[0] for m in models}
    if args.sweep_rows:
        return sweep(args, configs, results, save)
    for model in models:
        results["models"][model] = measure_model(args, model, configs[model])
        save()
    if torch.cuda.is_available() and args.device != "cpu":
        results["probe_model"] = models[0]
        rows = [int(r) for r in args.probe_rows.split(",") if r]
        cases = [tuple(int(n) for n in c.split("x")) for c in args.attention_cases.split(",") if c]
        probes = (("projections", lambda cfg, r: projection_sweep({models[0]: cfg}, r, candidates=False), rows),
                  ("attention", attention_probe, cases))
        for key, probe, what in probes:
            if not what:
                continue
            try:
                results[key] = probe(configs[models[0]], what)
            except Exception as exc:  # noqa: BLE001 - the figures above are kept either way
                results[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
            _free_device_memory()
            save()
    if not args.no_tests:
        results["tests"] = run_tests(out_dir, args.tests_timeout)
        print("tests:", results["tests"]["summary"], flush=True)
    save()
    print(to_markdown(results), flush=True)
    return 0


def apply_switches(args: argparse.Namespace) -> None:
    """The comparison switches: module settings the kernels read at every call, set before any graph is captured."""
    if args.gemv_max_rows:
        kernels.fp8_linear.GEMV_MAX_ROWS = args.gemv_max_rows
    if args.fp8_products_max_rows:
        kernels.fp8_linear.FP8_PRODUCTS_MAX_ROWS = args.fp8_products_max_rows
    if args.no_dependent_launch:
        kernels.dependent_launch.ENABLED = False


def sweep(args: argparse.Namespace, configs: dict[str, ModelConfig], results: dict[str, Any],
          save: Callable[[], None]) -> int:
    """--sweep-rows: the projections of every model, every GEMV candidate config; then the FP8 tests unless
    --no-tests. Exit status 2 without a CUDA GPU."""
    if not torch.cuda.is_available() or args.device == "cpu":
        print("--sweep-rows times kernels on a CUDA GPU; none is available here", file=sys.stderr, flush=True)
        return 2
    rows = [int(r) for r in args.sweep_rows.split(",") if r]
    results["projections"] = projection_sweep(configs, rows, candidates=True)
    save()
    if not args.no_tests:
        results["tests"] = run_tests(Path(args.out_dir), args.tests_timeout)
        save()
    print(to_markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
