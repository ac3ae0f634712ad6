"""FP8 benchmark: the FP8 tests compiled on the GPU, then one model bf16 against FP8 in the same run.

For each variant (bf16; FP8 weights; FP8 weights and FP8 KV cache) on dummy weights of a preset: the KV capacity
in tokens at the same memory budget, the batch-1 and batch-64 decode step (host wall-clock per Runner.step, CUDA
graphs), prefill tokens/s, and the logits of a fixed prompt set against the bf16 variant (cosine, top-1, KL).
Beside them, the 8B projections alone: the FP8 GEMV kernel and the per-token FP8 tensor-core GEMM against bf16
F.linear at several row counts (CUDA-graph replays of 50 calls, weights rotated out of L2).

    python bench/fp8.py --out-dir "$OUT"                      # H200: tests, then llama-3.1-8b (about 3 minutes)
    python bench/fp8.py --models /path/to/tiny --device cpu --no-tests --batch-sizes 1,4 --out-dir /tmp/fp8
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import torch  # noqa: E402

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from bench.engine import Bench, graph_replay_ms, graph_us  # noqa: E402
from bench.fp8_accuracy import fixed_prompts, last_logits, logit_agreement  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine import build_engine  # noqa: E402

FP8_TESTS = ["tests/kernels/test_fp8_linear.py", "tests/kernels/test_fp8_kv_cache.py",
             "tests/unit/worker/test_fp8_weights.py", "tests/unit/worker/test_fp8_kv_cache.py"]
# name → (quantization, kv_cache_dtype)
VARIANTS = {"bf16": ("", "auto"), "fp8 weights": ("fp8", "auto"), "fp8 weights + fp8 KV": ("fp8", "fp8")}


def run_tests(out_dir: Path, timeout_s: int) -> dict[str, Any]:
    """The gpu-marked FP8 tests (kernels compiled, the worker on CUDA); the log goes to out_dir/fp8_gpu_tests.txt."""
    tests = [t for t in FP8_TESTS if (Path(__file__).resolve().parents[1] / t).is_file()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rA", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parents[1])
        log, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        log, code = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout_s} s", -1
    (out_dir / "fp8_gpu_tests.txt").write_text(log)
    summary = next((line for line in reversed(log.splitlines()) if " in " in line and "=" in line), log[-200:])
    return {"command": "python -m pytest -q -m gpu " + " ".join(tests), "exit_code": code,
            "summary": summary.strip("= "), "seconds": round(time.perf_counter() - start, 1)}


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 3)


def measure_variant(args: argparse.Namespace, model: str, quantization: str, kv_cache_dtype: str,
                    prompts: list[list[int]]) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The figures of one variant, and its logits of `prompts` (None when the step failed)."""
    max_len = args.prompt_len + 3 * args.decode_steps + 32
    config = WorkerConfig(model=model, load_format="dummy", device=args.device, quantization=quantization,
                          kv_cache_dtype=kv_cache_dtype, max_model_len=max(args.max_model_len, max_len),
                          max_num_seqs=max(args.batch_sizes), max_num_batched_tokens=args.max_num_batched_tokens,
                          enforce_eager=args.enforce_eager)
    start = time.perf_counter()
    engine = build_engine(config)
    info = engine.info
    bench = Bench(engine, max(max_len, args.prefill_len))
    out: dict[str, Any] = {
        "build_s": round(time.perf_counter() - start, 1), "weight_bytes": bench.weight_bytes,
        "kv_cache_dtype": str(engine.runner.executor.model_runner.kv_cache.data.dtype).removeprefix("torch."),
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
        out["decode"].append(row)
        bench.finish(ids)
        print(f"  decode batch {batch}: {row}", flush=True)
    batch = max(1, args.max_num_batched_tokens // args.prefill_len)
    bench.finish(bench.prefill(batch, args.prefill_len)[0])  # warm-up
    rates = []
    for _ in range(args.prefill_repeats):
        ids, rate = bench.prefill(batch, args.prefill_len)
        rates.append(rate)
        bench.finish(ids)
    out["prefill"] = {"prompt_len": args.prefill_len, "seqs_per_step": batch, "tokens_per_s": round(max(rates))}
    logits = last_logits(engine, prompts)
    del bench, engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, logits


def projection_probe(hidden: int, intermediate: int, kv_size: int, rows: list[int]) -> list[dict[str, Any]]:
    """bf16 F.linear, the FP8 GEMV kernel and the FP8 tensor-core GEMM per projection shape and row count."""
    from kernels.fp8_gemv import fp8_gemv
    from kernels.fp8_linear import GEMV_MAX_ROWS, fp8_scaled_mm
    from kernels.fp8_quant import quantize_fp8_rows

    dev = torch.device("cuda")
    table = []
    for name, n_out, k_in in (("qkv_proj", hidden + 2 * kv_size, hidden), ("o_proj", hidden, hidden),
                              ("gate_up_proj", 2 * intermediate, hidden), ("down_proj", hidden, intermediate)):
        copies = max(2, int(2 * 60e6 // (n_out * k_in * 2)) + 1)  # more bytes than the L2 holds, twice over
        weights = [torch.randn(n_out, k_in, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        quantized = [quantize_fp8_rows(w) for w in weights]
        fp8 = [(q, s.view(-1)) for q, s in quantized]
        del quantized
        for m in rows:
            x = torch.randn(m, k_in, device=dev, dtype=torch.bfloat16)
            row: dict[str, Any] = {"proj": name, "n_out": n_out, "k_in": k_in, "rows": m,
                                   "bf16_us": graph_us(lambda i: torch.nn.functional.linear(x, weights[i % copies])),
                                   "fp8_scaled_mm_us": graph_us(lambda i: fp8_scaled_mm(x, *fp8[i % copies]))}
            if m <= 4 * GEMV_MAX_ROWS:
                row["fp8_gemv_us"] = graph_us(lambda i: fp8_gemv(x, *fp8[i % copies]))
            table.append(row)
        del weights, fp8
        torch.cuda.empty_cache()
    return table


def to_markdown(results: dict[str, Any]) -> str:
    lines = []
    if "tests" in results:
        t = results["tests"]
        lines += [f"GPU tests (`{t['command']}`): {t['summary']} (exit {t['exit_code']})", ""]
    for model, variants in results["models"].items():
        batches = sorted({d["batch"] for v in variants.values() if "decode" in v for d in v["decode"]})
        lines += [f"## {model}", "",
                  "| variant | weights (GB) | KV cache | KV capacity (tokens) | "
                  + " | ".join(f"decode b{b} step (ms)" for b in batches)
                  + " | prefill tok/s | cosine min / mean vs bf16 | top-1 | KL mean / max |",
                  "|---|---|---|---|" + "---|" * len(batches) + "---|---|---|---|"]
        for name, v in variants.items():
            if "error" in v:
                lines.append(f"| {name} | error: {v['error']} |")
                continue
            steps = {d["batch"]: d["step_ms"] for d in v["decode"]}
            acc = v.get("accuracy", {})
            lines.append(
                f"| {name} | {v['weight_bytes'] / 1e9:.2f} | {v['kv_cache_dtype']} | {v['kv_capacity_tokens']} | "
                + " | ".join(str(steps.get(b, "-")) for b in batches)
                + f" | {v['prefill']['tokens_per_s']} | {acc.get('cosine_min', '-')} / {acc.get('cosine_mean', '-')} | "
                f"{acc.get('top1_agreement', '-')} | {acc.get('kl_mean', '-')} / {acc.get('kl_max', '-')} |")
    if results.get("projections"):
        lines += ["", "## Projections alone (µs per call, graph of 50)", "",
                  "| proj | n x k | rows | bf16 F.linear | FP8 GEMV | FP8 scaled_mm (per-token) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['proj']} | {p['n_out']} x {p['k_in']} | {p['rows']} | {p['bf16_us']} | "
                  f"{p.get('fp8_gemv_us', '-')} | {p['fp8_scaled_mm_us']} |" for p in results["projections"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.1-8b", help="presets or checkpoint folders (dummy weights)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
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
    parser.add_argument("--tests-timeout", type=int, default=90)
    parser.add_argument("--probe-rows", default="1,4,8,16,64,256", help="row counts of the projection probe ('' skips)")
    parser.add_argument("--out-name", default="fp8_h200")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"models": {}, "args": {k: v for k, v in vars(args).items() if k != "out_dir"}}
    if not args.no_tests:
        results["tests"] = run_tests(out_dir, args.tests_timeout)
        print("tests:", results["tests"]["summary"], flush=True)
    for model in args.models.split(","):
        variants: dict[str, Any] = {}
        reference = None
        for name in args.variants.split(","):
            print(f"{model} {name}", flush=True)
            try:
                figures, logits = measure_variant(args, model, *VARIANTS[name], fixed_prompts(_vocab(model)))
            except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' figures
                variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {variants[name]['error']}", flush=True)
                continue
            if reference is None and name == "bf16":
                reference = logits
            elif reference is not None:
                figures["accuracy"] = logit_agreement(reference, logits)
            variants[name] = figures
            print(f"  {figures}", flush=True)
        results["models"][model] = variants
    rows = [int(r) for r in args.probe_rows.split(",") if r]
    if rows and torch.cuda.is_available():
        try:
            from services.worker.engine import resolve_model_config

            cfg = resolve_model_config(WorkerConfig(model=args.models.split(",")[-1], load_format="dummy"))[0]
            results["projections"] = projection_probe(cfg.hidden_size, cfg.intermediate_size, cfg.kv_size, rows)
        except Exception as exc:  # noqa: BLE001
            results["projections_error"] = f"{type(exc).__name__}: {exc}"
    markdown = to_markdown(results)
    print(markdown, flush=True)
    write_results(args.out_name, results, markdown, out_dir)
    return 0


def _vocab(model: str) -> int:
    from services.worker.engine import resolve_model_config

    return resolve_model_config(WorkerConfig(model=model, load_format="dummy"))[0].vocab_size


if __name__ == "__main__":
    raise SystemExit(main())
