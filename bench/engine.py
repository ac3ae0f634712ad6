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
from services.common.step import CachedSeqs, NewSeq, StepPlan  # noqa: E402
from services.worker.attention_metadata import SeqChunk  # noqa: E402
from services.worker.build import build_engine  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine import WorkerEngine  # noqa: E402

BANDWIDTH_BYTES_PER_S = 3.0e12  # measured device copy bandwidth of the H100 (bytes read + written)


class Bench:
    """Plays the scheduler for one engine: contiguous blocks per sequence, plans built without tokens."""

    def __init__(self, engine: WorkerEngine, max_len: int) -> None:
        self.engine = engine
        self.blocks_per_seq = -(-max_len // engine.info.block_size)
        self.step_id = 0
        self.next_seq = 0
        cfg = engine.info.model
        # Bytes a decode step reads: every weight, except an embedding table beside a head of its own (only its
        # used rows: an untied checkpoint's, or a tied one's whose head is an FP8 copy).
        embed = engine.model.model.embed_tokens.weight
        self.weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        if engine.model.lm_head is not None:
            self.weight_bytes -= embed.numel() * embed.element_size()
        self.kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * engine.model.model.norm.weight.element_size()

    def step(self, new=(), cached=(), finished=()) -> float:  # noqa: ANN001
        self.step_id += 1
        start = time.perf_counter()
        result = self.engine.runner.step(StepPlan(self.step_id, list(new), CachedSeqs.of(cached), list(finished)))
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
            new = [self.new_seq(seq_id, prompt_len) for seq_id in group]
            elapsed += self.step(new=new)
            total += prompt_len * len(group)
        return ids, total / elapsed

    def new_seq(self, seq_id: int, prompt_len: int) -> NewSeq:
        # Live ids form a range of at most max_num_seqs, so slots taken modulo never collide.
        slot = seq_id % (self.engine.info.num_kv_blocks // self.blocks_per_seq)
        first = slot * self.blocks_per_seq
        vocab = self.engine.info.model.vocab_size
        prompt = [(seq_id * 7919 + i * 104729) % vocab for i in range(prompt_len)]
        return NewSeq(seq_id, prompt, prompt_len, SamplingParams(max_tokens=4096, ignore_eos=True),
                      list(range(first, first + self.blocks_per_seq)), 0, prompt_len)

    def decode(self, ids: list[int], num_steps: int, overlap: bool = False) -> list[float]:
        """Per-step wall time of num_steps decode steps. overlap: two plans in flight, as a scheduler keeps them:
        each step is handed the next plan, so the runner may queue it on the device before reading this one."""
        if not overlap:
            return [self.step(cached=[(i, [], 1) for i in ids]) for _ in range(num_steps)]
        plans = []
        for _ in range(num_steps):
            self.step_id += 1
            plans.append(StepPlan(self.step_id, [], CachedSeqs.of((i, [], 1) for i in ids), []))
        times = []
        for k, plan in enumerate(plans):
            start = time.perf_counter()
            result = self.engine.runner.step(plan, next_plan=plans[k + 1] if k + 1 < num_steps else None)
            times.append(time.perf_counter() - start)
            if result.errors:
                raise RuntimeError(f"step {plan.step_id}: {result.errors[0].error.message}")
        return times[:-1]  # the last step had no next plan to overlap with

    def finish(self, ids: list[int]) -> None:
        self.step(finished=ids)

    def floor_ms(self, batch: int, mean_context: float) -> float:
        """Bandwidth floor of one decode step: every weight once plus each sequence's KV entries."""
        return (self.weight_bytes + batch * mean_context * self.kv_bytes_per_token) / BANDWIDTH_BYTES_PER_S * 1e3


def graph_replay_ms(engine: WorkerEngine, num_steps: int) -> float | None:
    """Median time of replaying the last decode step's graph alone (replay, then synchronize)."""
    graphs = getattr(engine.runner.executor, "graphs", None)
    if graphs is None or graphs.last_key is None:
        return None
    graph = graphs.graphs[graphs.last_key]
    times = []
    for _ in range(num_steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()  # the same inputs again: rewrites the same cache slot with the same values
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def graph_step_ms(engine: WorkerEngine, seq_id: int, num_steps: int) -> float:
    """Median time of the model runner's greedy decode of one sequence's last step (inputs into the staging
    array, the copy, the replay, the token read-back), without the Runner around it."""
    state = engine.runner.table.seqs[seq_id]
    pos = state.num_computed_tokens - 1
    chunk, token = SeqChunk(pos, 1, state.block_ids), [state.token_ids[pos]]
    model_runner = engine.runner.executor
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        model_runner.greedy_decode(token, [chunk])  # recomputes that step: the same cache slot, the same values
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def graph_us(fn, num_calls: int = 50, warmup: int = 3) -> float:  # noqa: ANN001 - fn(i) runs the i-th call
    """µs per call of num_calls calls replayed as one CUDA graph (launch gaps included), after `warmup` calls."""
    for i in range(warmup):
        fn(i)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(num_calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return round(start.elapsed_time(end) / num_calls * 1e3, 2)


def graph_us_or_error(fn, num_calls: int = 50) -> float | str:  # noqa: ANN001 - fn(i) runs the i-th call
    """graph_us of fn, or the error that stopped it (a kernel config that does not compile loses its cell only)."""
    try:
        return graph_us(fn, num_calls)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__


def gemv_probe(hidden: int, intermediate: int, num_steps: int = 50) -> list[dict[str, Any]]:
    """Batch-1 projections through cuBLAS in three layouts (weights rotated so that none stays in L2)."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    for name, n_out, k_in in (("qkv_proj (GQA 4, d128)", hidden + hidden // 2, hidden), ("o_proj", hidden, hidden), ("down_proj", hidden, intermediate),
                              ("gate_up_proj", 2 * intermediate, hidden)):
        copies = max(2, int(2 * 60e6 // (n_out * k_in * 2)) + 1)
        weights = [torch.randn(n_out, k_in, device=dev, dtype=dtype) for _ in range(copies)]
        weights_t = [w.t().contiguous() for w in weights]  # [k_in, n_out]
        x = torch.randn(1, k_in, device=dev, dtype=dtype)
        variants = {
            "F.linear(x, W)": lambda i: torch.nn.functional.linear(x, weights[i % copies]),
            "W @ x.T": lambda i: weights[i % copies] @ x.t(),
            "x @ W_t (stored [k, n])": lambda i: x @ weights_t[i % copies],
        }
        row: dict[str, Any] = {"proj": name, "n_out": n_out, "k_in": k_in}
        for label, fn in variants.items():
            row[label] = graph_us(fn, num_steps, warmup=copies)
        rows.append(row)
        del weights, weights_t
    return rows


def profile_table(bench: Bench, ids: list[int], num_steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        bench.decode(ids, num_steps)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)


# Kernel name fragments (lower case) by part of the step, first match wins; anything else is "other".
KERNEL_PARTS = (
    ("attention", ("decode_split", "decode_reduce", "prefill", "flash", "attention")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_", "cublas", "fp8_dequant_mm", "fp8_gemv")),
    ("norm", ("rms_norm",)),
    ("rotary and cache write", ("rotary", "write_kv")),
    ("activation", ("silu",)),
    ("sampling", ("argmax", "softmax", "sort", "topk", "multinomial", "exponential", "gumbel")),
    ("copies", ("memcpy", "memset", "copy", "fill")),
)


def kernel_part(name: str) -> str:
    low = name.lower()
    return next((part for part, keys in KERNEL_PARTS if any(k in low for k in keys)), "other")


def kernel_breakdown(run, num_steps: int) -> dict[str, Any]:  # noqa: ANN001 - run() performs num_steps steps
    """Device time of num_steps steps by part of the step (ms per step) and the ten largest kernels."""
    from torch.profiler import ProfilerActivity, profile

    from services.worker.kernel_profile import kernel_rows

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    rows = kernel_rows(prof)
    parts: dict[str, float] = {}
    for name, _, us in rows:
        part = kernel_part(name)
        parts[part] = parts.get(part, 0.0) + us
    total = sum(parts.values())
    return {"device_ms_per_step": round(total / num_steps / 1e3, 3),
            "parts_ms_per_step": {k: round(v / num_steps / 1e3, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": name[:120], "calls_per_step": round(calls / num_steps, 2),
                             "ms_per_step": round(us / num_steps / 1e3, 3)} for name, calls, us in rows[:10]]}


def mixed_steps(bench: Bench, ids: list[int], prompt_len: int, num_steps: int = 8) -> dict[str, Any]:
    """Steps that decode `ids` and prefill one new prompt of prompt_len tokens each, as continuous batching runs
    them when one sequence ends and the next starts: host wall time per step, then device time by part."""
    def run() -> list[float]:
        times, new_ids = [], []
        for _ in range(num_steps):
            new = bench.new_seq(bench.next_seq, prompt_len)
            new_ids.append(bench.next_seq)
            bench.next_seq += 1
            times.append(bench.step(new=[new], cached=[(i, [], 1) for i in ids]))
        bench.finish(new_ids)
        return times

    run()  # warm-up
    times = run()
    return {"new_prompt_len": prompt_len, "step_ms": round(statistics.median(times) * 1e3, 3),
            "kernels": kernel_breakdown(run, num_steps)}


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
    # The worker's share of an idle request's time to first token: one prompt prefilled alone.
    first = []
    for _ in range(max(3, args.alone_steps)):
        ids, rate = bench.prefill(1, args.alone_len)
        first.append(args.alone_len / rate)
        bench.finish(ids)
    out["prefill_batch1"] = {"prompt_len": args.alone_len, "median_ms": round(statistics.median(first[2:]) * 1e3, 3),
                             "max_ms": round(max(first[2:]) * 1e3, 3), "first_ms": round(first[0] * 1e3, 3)}
    if args.profile_batches and info.device.startswith("cuda"):
        def prefill_alone() -> None:
            bench.finish(bench.prefill(1, args.alone_len)[0])
        out["prefill_batch1"]["kernels"] = kernel_breakdown(prefill_alone, 1)
    # Batch-1 inter-token latency.
    ids, _ = bench.prefill(1, args.prompt_len)
    bench.decode(ids, 8)  # warm-up
    times = bench.decode(ids, args.decode_steps)
    itl = statistics.median(times) * 1e3
    floor = bench.floor_ms(1, args.prompt_len + 8 + args.decode_steps / 2)
    out["itl_batch1"] = {"median_ms": round(itl, 3), "mean_ms": round(statistics.fmean(times) * 1e3, 3),
                         "p90_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 3),
                         "floor_ms": round(floor, 3), "floor_pct": round(100 * floor / itl, 1)}
    # The same sequence, two plans in flight: each step queued behind the previous one on the device.
    overlapped_before = engine.runner.num_overlapped_steps
    bench.decode(ids, 8, overlap=True)
    times = bench.decode(ids, args.decode_steps, overlap=True)
    out["itl_batch1"]["overlap_median_ms"] = round(statistics.median(times) * 1e3, 3)
    out["itl_batch1"]["overlap_mean_ms"] = round(statistics.fmean(times) * 1e3, 3)
    out["itl_batch1"]["num_overlapped_steps"] = engine.runner.num_overlapped_steps - overlapped_before
    times = bench.decode(ids, args.decode_steps)  # sequential again, after: drift shows as a difference
    out["itl_batch1"]["median_after_ms"] = round(statistics.median(times) * 1e3, 3)
    replay = graph_replay_ms(engine, args.decode_steps)
    if replay is not None:
        # What a step costs beyond replaying its graph: plan, inputs, copies, argmax read-back, bookkeeping;
        # split into the graph runner's share (inputs, one copy each way, the sync) and the rest (Runner, plan).
        graph_step = graph_step_ms(engine, ids[0], args.decode_steps)
        out["itl_batch1"]["graph_replay_ms"] = round(replay, 3)
        out["itl_batch1"]["graph_step_ms"] = round(graph_step, 3)
        out["itl_batch1"]["host_ms"] = round(itl - replay, 3)
        out["num_graphs"] = engine.runner.executor.graphs.num_graphs
    bench.finish(ids)
    # Decode throughput per batch size.
    out["decode"] = []
    for batch in args.batch_sizes:
        ids, _ = bench.prefill(batch, args.prompt_len)
        bench.decode(ids, 4)
        times = bench.decode(ids, args.decode_steps)
        step_ms = statistics.median(times) * 1e3
        overlap_ms = statistics.median(bench.decode(ids, args.decode_steps, overlap=True)) * 1e3
        floor = bench.floor_ms(batch, args.prompt_len + 4 + args.decode_steps / 2)
        out["decode"].append({"batch": batch, "step_ms": round(step_ms, 3), "overlap_step_ms": round(overlap_ms, 3),
                              "tokens_per_s": round(batch / statistics.median(times), 1),
                              "floor_ms": round(floor, 3), "floor_pct": round(100 * floor / step_ms, 1)})
        if batch in args.profile_batches and info.device.startswith("cuda"):
            out["decode"][-1]["kernels"] = kernel_breakdown(lambda: bench.decode(ids, 8), 8)  # noqa: B023
            # One row fewer than max_num_seqs decodes beside the new prompt, which takes the last row.
            out["decode"][-1]["mixed"] = mixed_steps(bench, ids[: info.max_num_seqs - 1], args.prompt_len)
        bench.finish(ids)
        print(f"{preset} decode batch {batch}: {step_ms:.3f} ms/step, overlapped {overlap_ms:.3f}", flush=True)
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
    if args.profile_batches and info.device.startswith("cuda"):
        def prefill_once() -> None:
            bench.finish(bench.prefill(batch, prefill_len)[0])
        out["prefill"]["kernels"] = kernel_breakdown(prefill_once, -(-batch * prefill_len // args.max_num_batched_tokens))
    if args.gemv_probe and info.device.startswith("cuda"):
        cfg = info.model
        out["gemv_probe_us"] = gemv_probe(cfg.hidden_size, cfg.intermediate_size)
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
    lines = ["| model | batch-1 prefill (ms) | batch-1 ITL (ms) | ITL overlapped (ms) | ITL again (ms) | graph replay (ms) "
             "| graph step (ms) | host (ms) | floor (ms) | % of floor | prefill tok/s | build (s) | graphs | KV blocks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        i = r["itl_batch1"]
        p = r["prefill_batch1"]
        lines.append(f"| {r['model']} | {p['median_ms']} (1 x {p['prompt_len']}, first {p['first_ms']}) | {i['median_ms']} | {i['overlap_median_ms']} | {i['median_after_ms']} | "
                     f"{i.get('graph_replay_ms', '-')} | "
                     f"{i.get('graph_step_ms', '-')} | {i.get('host_ms', '-')} | "
                     f"{i['floor_ms']} | {i['floor_pct']} | {r['prefill']['tokens_per_s']} | {r['build_s']} | "
                     f"{r.get('num_graphs', '-')} | {r['num_kv_blocks']} |")
    for r in results:
        lines += ["", f"## {r['model']} decode ({r['dtype']}, CUDA graphs: {r['cuda_graphs']})", "",
                  "| batch | step (ms) | overlapped step (ms) | tokens/s | floor (ms) | % of floor |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {d['batch']} | {d['step_ms']} | {d['overlap_step_ms']} | {d['tokens_per_s']} | "
                  f"{d['floor_ms']} | {d['floor_pct']} |"
                  for d in r["decode"]]
        if "gemv_probe_us" in r:
            labels = [k for k in r["gemv_probe_us"][0] if k not in ("proj", "n_out", "k_in")]
            lines += ["", f"### {r['model']} batch-1 projections, µs per call (graph of 50)", "",
                      "| proj | n x k | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
            lines += [f"| {g['proj']} | {g['n_out']} x {g['k_in']} | " + " | ".join(str(g[k]) for k in labels) + " |"
                      for g in r["gemv_probe_us"]]
        profiled = [(f"prefill of one prompt of {r['prefill_batch1']['prompt_len']} (host "
                     f"{r['prefill_batch1']['median_ms']} ms)", r["prefill_batch1"]["kernels"])] if "kernels" in r["prefill_batch1"] else []
        profiled += [(f"decode batch {d['batch']}", d["kernels"]) for d in r["decode"] if "kernels" in d]
        profiled += [(f"decode batch {d['batch']} + one prompt of {d['mixed']['new_prompt_len']} "
                      f"(host {d['mixed']['step_ms']} ms)", d["mixed"]["kernels"]) for d in r["decode"] if "mixed" in d]
        if "kernels" in r["prefill"]:
            profiled.append((f"prefill step of {r['prefill']['seqs_per_step']} x {r['prefill']['prompt_len']} tokens",
                             r["prefill"]["kernels"]))
        if profiled:
            parts = sorted({p for _, k in profiled for p in k["parts_ms_per_step"]})
            lines += ["", f"### {r['model']} device time per step by part (ms, torch.profiler)", "",
                      "| step | device | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
            lines += [f"| {label} | {k['device_ms_per_step']} | "
                      + " | ".join(str(k["parts_ms_per_step"].get(p, 0)) for p in parts) + " |" for label, k in profiled]
            for label, k in profiled:
                lines += ["", f"{label}, largest kernels (ms per step, calls per step):", ""]
                lines += [f"- {t['ms_per_step']} ms, {t['calls_per_step']}x `{t['name']}`" for t in k["top_kernels"]]
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
    parser.add_argument("--alone-len", type=int, default=128, help="prompt length of the prompt prefilled alone")
    parser.add_argument("--alone-steps", type=int, default=12, help="times that prompt is prefilled (first two: warm-up)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--num-kv-blocks", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of batch-1 decode")
    parser.add_argument("--profile-batches", default="",
                        help="decode batch sizes (and the prefill step) whose device time is split by kernel")
    parser.add_argument("--gemv-probe", action="store_true", help="time batch-1 projections in three layouts")
    parser.add_argument("--out-name", default="", help="write bench/results/<name>.json and .md")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.profile_batches = [int(b) for b in args.profile_batches.split(",") if b]
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
