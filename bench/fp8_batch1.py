"""The batch-1 decode step with FP8 weights and head, A/B by the settings that shape it: the one-row GEMV tiling
(kernels.fp8_gemv's ONE_ROW_*), the gate/up projection fused with SiLU-and-mul (kernels.fp8_linear.GATED_GEMV)
and the splits of the short-context decode graphs (services.worker.cuda_graphs.context_buckets).

Each variant runs in a process of its own (the settings are read when the graphs are captured): one prompt of 128
tokens, 300 decode steps with two plans in flight (the runner's overlapped path, contexts 136 to 436; median host
time per step), then the last step's graph replayed 200 times back to back, three times (ms per replay). The
variants are listed in the order given, so repeating one checks the machine's drift.

    python bench/fp8_batch1.py --models llama-3.1-8b,llama-3.2-1b --variants default,old_tiles,unfused,unsplit \
        --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

# name → (one-row GEMV block_n, block_k, programs per SM; gate/up fused; short-context graph splits, 0: the default)
VARIANTS = {
    "default": ((8, 1024, 2), True, 0),
    "old_tiles": ((16, 512, 4), False, 1),  # the settings before these three changes
    "unfused": ((8, 1024, 2), False, 0),
    "unsplit": ((8, 1024, 2), True, 1),
    "split2": ((8, 1024, 2), True, 2),
}


def measure(model: str, variant: str) -> dict:
    import torch

    import kernels.fp8_gemv as fp8_gemv
    import kernels.fp8_linear as fp8_linear
    import services.worker.cuda_graphs as cuda_graphs

    tiles, gated, short_splits = VARIANTS[variant]
    fp8_gemv.ONE_ROW_BLOCK_N, fp8_gemv.ONE_ROW_BLOCK_K, fp8_gemv.ONE_ROW_PROGRAMS_PER_SM = tiles
    fp8_linear.GATED_GEMV = gated
    if short_splits:
        buckets = cuda_graphs.context_buckets

        def fixed_short(*args, **kwargs) -> list[tuple[int, int]]:
            found = buckets(*args, **kwargs)
            return [(found[0][0], short_splits), *found[1:]] if len(found) > 1 else found

        cuda_graphs.context_buckets = fixed_short
    from bench.engine import Bench
    from services.worker.build import build_engine
    from services.worker.config import WorkerConfig

    engine = build_engine(WorkerConfig(model=model, load_format="dummy", device="cuda", quantization="fp8",
                                       quantize_lm_head=True, max_model_len=2048, max_num_seqs=64))
    bench = Bench(engine, 1024)
    ids, _ = bench.prefill(1, 128)
    bench.decode(ids, 8, overlap=True)
    steps = bench.decode(ids, 300, overlap=True)
    graphs = engine.runner.executor.graphs
    graph = graphs.graphs[graphs.last_key]
    replays = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            graph.replay()
        torch.cuda.synchronize()
        replays.append(round((time.perf_counter() - start) / 200 * 1e3, 4))
    return {"model": model, "variant": variant, "one_row_tiles": tiles, "gated": gated,
            "short_context_graph": list(graphs.contexts[1][0]),
            "overlapped_step_ms": round(statistics.median(steps) * 1e3, 4), "replay_ms": replays}


def to_markdown(rows: list[dict], header: list[str]) -> str:
    lines = [*header, "", "| model | variant | one-row tiles (n, k, programs/SM) | gate/up + SiLU fused | "
             "short-context graph (tokens, splits) | overlapped step ms | replay ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | error: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {tuple(r['one_row_tiles'])} | {r['gated']} | "
                     f"{tuple(r['short_context_graph'])} | {r['overlapped_step_ms']} | "
                     f"{' / '.join(map(str, r['replay_ms']))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.1-8b,llama-3.2-1b")
    parser.add_argument("--variants", default="default,old_tiles,unfused,unsplit,default")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per variant")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--out-name", default="fp8_batch1_h200")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one)), flush=True)
        return 0
    from bench.common import environment

    rows = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
            proc = subprocess.run([sys.executable, __file__, "--one", model, variant], capture_output=True,
                                  text=True, timeout=args.timeout_s)
            lines = proc.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "model": model, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    env = environment()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.out_name}.json").write_text(json.dumps({**env, "rows": rows}, indent=1) + "\n")
    header = [f"# {args.out_name}", "", *(f"- {k}: {v}" for k, v in env.items())]
    (out / f"{args.out_name}.md").write_text(to_markdown(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
