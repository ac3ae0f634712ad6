"""Host cost of one attention launch, as a prefill or mixed step of the worker pays it once per layer.

Every layer of a step calls the attention kernels with the same shapes, dtypes and metadata and its own K/V cache
(the worker's KVCache: one allocation, a view per layer). This times the host side of those calls back to back over
every layer's cache, at the Llama-3.2-1B and Llama-3.1-8B shapes (block size 16):

* prefill alone: paged_prefill_attention on one prompt of --prompt-len tokens (the prefill-alone row of
  bench/engine.py);
* mixed step: the decode rows' paged_decode_attention (each of --decode-batches rows of contexts up to
  --decode-context, with the context bound, split count and tiling the worker fixes for their batch bucket: a few
  rows take the Gluon kernel on Hopper, many the Triton one) and the new prompt's paged_prefill_attention.

Each call is timed alone (perf_counter around the call; the device is not waited for, so what is timed is the host's
work up to the launch), in three modes: `fresh` empties every launch memo before each call (kernels/launch_memo.py;
the call then derives everything again, as each call did before the memos, and refills the memos, a little more work
than before them), `memoized` keeps them, `worker` keeps them and marks every layer's calls but the first
`checked=True`, as the worker's piecewise steps do (the arguments were checked by the first layer's calls). After
timing, every layer's outputs in the three modes are compared bit for bit. With --profile-rounds, cProfile then
runs that many worker-mode passes per case and the results list the functions with the most own time per call.

    python bench/attention_launch.py --out bench/results/attention_launch_h200
    python bench/attention_launch.py --models llama-3.2-1b --rounds 20 --profile-rounds 5 --out ...
    TRITON_INTERPRET=1 python bench/attention_launch.py --device cpu --dtype float32 --layers 2 --rounds 2 \\
        --prompt-len 16 --decode-batches 2 --decode-context 40 --out /tmp/attention_launch_cpu  # a rehearsal only
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import torch  # noqa: E402

from bench.common import write_results  # noqa: E402
from kernels import paged_decode_attention, paged_prefill_attention  # noqa: E402
from kernels.decode_attention import default_decode_config  # noqa: E402
from kernels.launch_memo import clear_launch_memos  # noqa: E402
from services.worker.cuda_graphs import SHORT_CONTEXT_LEN, context_buckets  # noqa: E402
from services.worker.kv_cache import KVCache  # noqa: E402
from services.worker.model_config import ModelConfig  # noqa: E402
from services.worker.presets import PRESETS  # noqa: E402

BLOCK_SIZE = 16
MODES = ("fresh", "memoized", "worker")
LayerCall = Callable[[bool], torch.Tensor]  # call(checked) of one layer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(calls: list[LayerCall], rounds: int, mode: str, device: torch.device) -> list[float]:
    """Microseconds of each call of `rounds` passes over `calls` (one per layer) in one of MODES; a pass starts once
    the device finished the previous one."""
    times = []
    for _ in range(rounds):
        _sync(device)
        for index, call in enumerate(calls):
            if mode == "fresh":
                clear_launch_memos()
            checked = mode == "worker" and index > 0
            start = time.perf_counter()
            call(checked)
            times.append((time.perf_counter() - start) * 1e6)
    _sync(device)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_us": round(statistics.median(ordered), 2), "p10_us": round(ordered[len(ordered) // 10], 2),
            "p90_us": round(ordered[(9 * len(ordered)) // 10], 2), "calls": len(ordered)}


def profile_calls(calls: list[LayerCall], rounds: int, top: int) -> list[dict[str, Any]]:
    """The `top` functions by own time over `rounds` worker-mode passes (cProfile), in microseconds per call."""
    profiler = cProfile.Profile()
    for _ in range(rounds):
        for index, call in enumerate(calls):
            profiler.runcall(call, index > 0)
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (primitive calls, calls, own s, cumulative s, ...)}
    num_calls = rounds * len(calls)
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls_per_call": round(ncalls / num_calls, 2),
             "own_us": round(own * 1e6 / num_calls, 2), "cumulative_us": round(cum * 1e6 / num_calls, 2)}
            for (file, line, name), (_, ncalls, own, cum, _) in rows]


def bit_identical(calls: list[LayerCall]) -> bool:
    """Every layer's output in each mode equals the fresh call's, bit for bit."""
    same = True
    for index, call in enumerate(calls):
        clear_launch_memos()
        fresh = call(False).clone()
        call(False)  # fills the memos
        same &= torch.equal(fresh, call(False))
        same &= torch.equal(fresh, call(index > 0))
    return same


def case_calls(cfg: ModelConfig, kv: KVCache, args: argparse.Namespace, device: torch.device
               ) -> dict[str, list[LayerCall]]:
    """Per case, one call per layer, all arguments made beforehand (as a step's metadata is)."""
    dtype, g = kv.data.dtype, torch.Generator(device=device).manual_seed(0)
    heads, head_dim, scale = cfg.num_heads, cfg.head_dim, cfg.head_dim**-0.5

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    def int32(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device)

    prompt, batch, context = args.prompt_len, max(args.decode_batches), args.decode_context
    pages_per_seq = -(-max(prompt, context) // BLOCK_SIZE)
    # The prompt's pages first, then each decode row's.
    prompt_table = torch.arange(pages_per_seq, dtype=torch.int32, device=device)[None, :]
    decode_tables = pages_per_seq + torch.arange(batch * pages_per_seq, dtype=torch.int32, device=device).view(
        batch, pages_per_seq)
    prompt_starts, prompt_lens = int32([0, prompt]), int32([prompt])
    decode_lens = int32([context - (i % 7) * 3 for i in range(batch)])  # unequal, as a batch's are
    q_mixed, out_mixed = rand(batch + prompt, heads, head_dim), torch.empty(batch + prompt, heads, head_dim,
                                                                             dtype=dtype, device=device)
    q_alone, out_alone = q_mixed[batch:].clone(), torch.empty(prompt, heads, head_dim, dtype=dtype, device=device)
    q_prompt, out_prompt = q_mixed[batch:], out_mixed[batch:]

    def prefill(q: torch.Tensor, out: torch.Tensor, layer: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN202
        return lambda checked: paged_prefill_attention(q, layer[0], layer[1], prompt_table, prompt_starts, prompt_lens,
                                                       scale, causal=True, max_query_len=prompt, out=out,
                                                       checked=checked)

    def decode(rows: int, layer: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN202
        # As the worker's mixed steps run them (DecodeGraphs.with_graph_decode_tiling): the context bound, split
        # count and tiling of the decode graph of `rows` sequences (a batch bucket) whose contexts reach
        # --decode-context, on the first rows of the step's tensors.
        limit, splits = next((limit, splits) for limit, splits in context_buckets(
            rows, cfg.num_kv_heads, args.max_model_len, SHORT_CONTEXT_LEN, BLOCK_SIZE, device) if limit >= context)
        config = default_decode_config(rows, cfg.num_kv_heads, splits, BLOCK_SIZE, device)
        return lambda checked: paged_decode_attention(
            q_mixed[:rows], layer[0], layer[1], decode_tables[:rows], decode_lens[:rows], scale,
            max_context_len=limit, num_splits=splits, out=out_mixed[:rows], config=config, checked=checked)

    layers = kv.layers[: args.layers or len(kv.layers)]
    cases = {"prefill alone": [prefill(q_alone, out_alone, layer) for layer in layers],
             "mixed: prompt": [prefill(q_prompt, out_prompt, layer) for layer in layers]}
    for rows in args.decode_batches:
        cases[f"mixed: {rows} decode rows"] = [decode(rows, layer) for layer in layers]
    return cases


def bench_model(preset: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg = ModelConfig.from_hf(PRESETS[preset], source=preset)
    pages_per_seq = -(-max(args.prompt_len, args.decode_context) // BLOCK_SIZE)
    dtype = getattr(torch, args.dtype)
    kv = KVCache(cfg, (max(args.decode_batches) + 1) * pages_per_seq, BLOCK_SIZE, dtype, device)
    kv.data.normal_(generator=torch.Generator(device=device).manual_seed(1))  # each layer's cache its own content
    cases = case_calls(cfg, kv, args, device)
    for calls in cases.values():  # compiles every kernel variant, outside the timing
        for call in calls:
            call(False)
    _sync(device)
    out: dict[str, Any] = {"model": preset, "layers": len(next(iter(cases.values()))), "num_heads": cfg.num_heads,
                           "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "block_size": BLOCK_SIZE,
                           "cases": {}}
    for name, calls in cases.items():
        row = {mode: summary(time_calls(calls, args.rounds, mode, device)) for mode in MODES}
        row["saved_us"] = round(row["fresh"]["median_us"] - row["worker"]["median_us"], 2)
        row["bit_identical"] = bit_identical(calls)
        if args.profile_rounds:
            row["profile"] = profile_calls(calls, args.profile_rounds, args.profile_top)
        out["cases"][name] = row
        print(f"{preset} {name}: " + ", ".join(f"{m} {row[m]['median_us']} us" for m in MODES)
              + f" per call, bit-identical {row['bit_identical']}", flush=True)
    del cases, kv
    return out


def to_markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"Host microseconds per attention call (median, p10 to p90) over every layer's own cache, {args.rounds} "
             f"passes; prefill alone: 1 x {args.prompt_len} tokens; mixed step: decode rows (contexts up to "
             f"{args.decode_context}) + 1 x {args.prompt_len} prompt tokens. `fresh`: every launch "
             "memo emptied before each call (everything derived again, as before the memos, and the memos refilled); "
             "`memoized`: memos "
             "kept; `worker`: memos kept and every layer's call but the first marked checked, as the worker's "
             "piecewise steps run. Saved: fresh minus worker. Bit-identical: each layer's outputs in the three modes "
             "are equal.", "",
             "| model | layers | call | fresh (us) | memoized (us) | worker (us) | saved per call (us) "
             "| saved per step (us) | bit-identical |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, row in r["cases"].items():
            times = " | ".join(f"{row[m]['median_us']} ({row[m]['p10_us']} to {row[m]['p90_us']})" for m in MODES)
            lines.append(f"| {r['model']} | {r['layers']} | {name} | {times} | {row['saved_us']} | "
                         f"{round(row['saved_us'] * r['layers'], 1)} | {row['bit_identical']} |")
    for r in results:
        for name, row in r["cases"].items():
            if "profile" not in row:
                continue
            lines += ["", f"### {r['model']}, {name}: where a worker-mode call's host time goes", "",
                      f"cProfile over {args.profile_rounds} passes (the profiler's own cost inflates every figure); "
                      "microseconds per attention call.", "",
                      "| function | calls per call | own us | cumulative us |", "|---|---|---|---|"]
            lines += [f"| `{p['function']}` | {p['calls_per_call']} | {p['own_us']} | {p['cumulative_us']} |"
                      for p in row["profile"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--layers", type=int, default=0, help="time only the first N layers (0: all of the model)")
    parser.add_argument("--rounds", type=int, default=50, help="passes over the layers per case and mode")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-batches", default="4,64", help="decode rows of the mixed steps timed")
    parser.add_argument("--decode-context", type=int, default=480)
    parser.add_argument("--max-model-len", type=int, default=4096, help="the decode graphs' longest context")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile-rounds", type=int, default=0,
                        help="also profile this many worker-mode passes per case (cProfile), 0: none")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profiled case")
    parser.add_argument("--out", default="", help="path without extension: writes PATH.json and PATH.md")
    args = parser.parse_args(argv)
    args.decode_batches = [int(b) for b in args.decode_batches.split(",")]
    device = torch.device(args.device)
    results = [bench_model(preset, args, device) for preset in args.models.split(",")]
    markdown = to_markdown(results, args)
    print(markdown)
    if args.out:
        out = Path(args.out)
        write_results(out.name, {"results": results}, markdown, out.parent)
    return 0 if all(row["bit_identical"] for r in results for row in r["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
