"""Engine benchmark: the worker's Runner in-process (no gRPC) on dummy weights.

Reports batch-1 inter-token latency, decode throughput at batch 1 to 256 and prefill tokens/s, each beside its
bandwidth floor: the bytes a step must read (every weight once, plus the KV entries attended to) over the
measured 3.0 TB/s of the H100. Timings are host wall-clock per Runner.step, so they include building the
attention metadata, the graph replay or eager launches, sampling and reading the token ids back.

    python bench/engine.py --models llama-3.2-1b,llama-3.1-8b --out-name engine_h100
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

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from services.common.sampling import SamplingParams  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine import Engine, build_engine  # noqa: E402
from services.worker.plan import CachedSeq, NewSeq, StepPlan  # noqa: E402

BANDWIDTH_BYTES_PER_S = 3.0e12  # measured device copy bandwidth of the H100 (bytes read + written)


class Bench:
    """Plays the scheduler for one engine: contiguous blocks per sequence, plans built without tokens."""

    def __init__(self, engine: Engine, max_len: int) -> None:
        self.engine = engine
        self.blocks_per_seq = -(-max_len // engine.info.block_size)
        self.step_id = 0
        self.next_seq = 0
        cfg = engine.info.model
        # Bytes a decode step reads: every weight, except an untied embedding table (only its used rows).
        embed = engine.model.model.embed_tokens.weight
        self.weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        if not cfg.tie_word_embeddings:
            self.weight_bytes -= embed.numel() * embed.element_size()
        self.kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * engine.model.model.norm.weight.element_size()

    def step(self, new=(), cached=(), finished=()) -> float:  # noqa: ANN001
        self.step_id += 1
        start = time.perf_counter()
        result = self.engine.runner.step(StepPlan(self.step_id, list(new), list(cached), list(finished)))
        elapsed = time.perf_counter() - start
        if result.errors:
            raise RuntimeError(f"step {self.step_id}: {result.errors[0].error.message}")
        return elapsed

    def prefill(self, batch: int, prompt_len: int) -> tuple[list[int], float]:
        """New sequences, prefilled within max_num_batched_tokens per step; returns ids and tokens/s."""
        budget = self.engine.info.max_num_batched_tokens
        ids = list(range(self.next_seq, self.next_seq + batch))
        self.next_seq += batch
        total, elapsed, pending = 0, 0.0, list(ids)
        while pending:
            group = pending[: max(1, budget // prompt_len)]
            pending = pending[len(group):]
            new = [self._new_seq(seq_id, prompt_len) for seq_id in group]
            elapsed += self.step(new=new)
            total += prompt_len * len(group)
        return ids, total / elapsed

    def _new_seq(self, seq_id: int, prompt_len: int) -> NewSeq:
        # Live ids form a range of at most max_num_seqs, so slots taken modulo never collide.
        slot = seq_id % (self.engine.info.num_kv_blocks // self.blocks_per_seq)
        first = slot * self.blocks_per_seq
        vocab = self.engine.info.model.vocab_size
        prompt = [(seq_id * 7919 + i * 104729) % vocab for i in range(prompt_len)]
        return NewSeq(seq_id, prompt, prompt_len, SamplingParams(max_tokens=4096, ignore_eos=True),
                      list(range(first, first + self.blocks_per_seq)), 0, prompt_len)

    def decode(self, ids: list[int], num_steps: int) -> list[float]:
        return [self.step(cached=[CachedSeq(i, [], 1) for i in ids]) for _ in range(num_steps)]

    def finish(self, ids: list[int]) -> None:
        self.step(finished=ids)

    def floor_ms(self, batch: int, mean_context: float) -> float:
        """Bandwidth floor of one decode step: every weight once plus each sequence's KV entries."""
        return (self.weight_bytes + batch * mean_context * self.kv_bytes_per_token) / BANDWIDTH_BYTES_PER_S * 1e3


def profile_table(bench: Bench, ids: list[int], num_steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        bench.decode(ids, num_steps)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)


def bench_model(args: argparse.Namespace, preset: str) -> dict[str, Any]:
    max_len = args.prompt_len + args.decode_steps * 4 + 16
    config = WorkerConfig(model=preset, load_format="dummy", dtype=args.dtype, device=args.device,
                          max_model_len=max(args.max_model_len, max_len), max_num_seqs=max(args.batch_sizes),
                          max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
                          num_kv_blocks=args.num_kv_blocks)
    start = time.perf_counter()
    engine = build_engine(config)
    build_s = time.perf_counter() - start
    bench = Bench(engine, max(max_len, args.prefill_len))
    info = engine.info
    out: dict[str, Any] = {"model": preset, "build_s": round(build_s, 2), "num_kv_blocks": info.num_kv_blocks,
                           "weight_bytes": bench.weight_bytes, "dtype": info.dtype, "device": info.device,
                           "cuda_graphs": not args.enforce_eager and info.device.startswith("cuda")}
    # Batch-1 inter-token latency.
    ids, _ = bench.prefill(1, args.prompt_len)
    bench.decode(ids, 8)  # warm-up
    times = bench.decode(ids, args.decode_steps)
    itl = statistics.median(times) * 1e3
    floor = bench.floor_ms(1, args.prompt_len + 8 + args.decode_steps / 2)
    out["itl_batch1"] = {"median_ms": round(itl, 3), "mean_ms": round(statistics.fmean(times) * 1e3, 3),
                         "p90_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 3),
                         "floor_ms": round(floor, 3), "floor_pct": round(100 * floor / itl, 1)}
    bench.finish(ids)
    # Decode throughput per batch size.
    out["decode"] = []
    for batch in args.batch_sizes:
        ids, _ = bench.prefill(batch, args.prompt_len)
        bench.decode(ids, 4)
        times = bench.decode(ids, args.decode_steps)
        step_ms = statistics.median(times) * 1e3
        floor = bench.floor_ms(batch, args.prompt_len + 4 + args.decode_steps / 2)
        out["decode"].append({"batch": batch, "step_ms": round(step_ms, 3),
                              "tokens_per_s": round(batch / statistics.median(times), 1),
                              "floor_ms": round(floor, 3), "floor_pct": round(100 * floor / step_ms, 1)})
        bench.finish(ids)
        print(f"{preset} decode batch {batch}: {step_ms:.3f} ms/step", flush=True)
    # Prefill throughput: full steps of max_num_batched_tokens.
    prefill_len = args.prefill_len
    batch = max(1, args.max_num_batched_tokens // prefill_len)
    bench.finish(bench.prefill(batch, prefill_len)[0])  # warm-up
    rates = []
    for _ in range(3):
        ids, rate = bench.prefill(batch, prefill_len)
        rates.append(rate)
        bench.finish(ids)
    out["prefill"] = {"prompt_len": prefill_len, "seqs_per_step": batch, "tokens_per_s": round(max(rates), 1)}
    if args.profile and info.device.startswith("cuda"):
        # Last: an active profiler slows the launches of whatever runs after it.
        ids, _ = bench.prefill(1, args.prompt_len)
        bench.decode(ids, 8)
        try:
            out["profile_batch1"] = profile_table(bench, ids, 20)
        except Exception as exc:  # noqa: BLE001 - a profiler failure must not lose the figures
            out["profile_batch1"] = f"profiler failed: {type(exc).__name__}: {exc}"
    return out


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | batch-1 ITL (ms) | floor (ms) | % of floor | prefill tok/s | build (s) | KV blocks |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        i = r["itl_batch1"]
        lines.append(f"| {r['model']} | {i['median_ms']} | {i['floor_ms']} | {i['floor_pct']} | "
                     f"{r['prefill']['tokens_per_s']} | {r['build_s']} | {r['num_kv_blocks']} |")
    for r in results:
        lines += ["", f"## {r['model']} decode ({r['dtype']}, CUDA graphs: {r['cuda_graphs']})", "",
                  "| batch | step (ms) | tokens/s | floor (ms) | % of floor |", "|---|---|---|---|---|"]
        lines += [f"| {d['batch']} | {d['step_ms']} | {d['tokens_per_s']} | {d['floor_ms']} | {d['floor_pct']} |"
                  for d in r["decode"]]
        if "profile_batch1" in r:
            lines += ["", f"### {r['model']} batch-1 decode, torch.profiler (20 steps)", "", "```",
                      r["profile_batch1"], "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--prefill-len", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--num-kv-blocks", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of batch-1 decode")
    parser.add_argument("--out-name", default="", help="write bench/results/<name>.json and .md")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = []
    for preset in args.models.split(","):
        results.append(bench_model(args, preset))
        print(to_markdown(results[-1:]), flush=True)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if args.out_name:
        note = ("Floors: bytes a step must read (weights once + KV entries) / 3.0 TB/s. "
                "Timings are host wall-clock per Runner.step (metadata, forward, sampling, token read-back).\n\n")
        write_results(args.out_name, {"results": results}, note + to_markdown(results), Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
