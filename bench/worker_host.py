"""Worker host benchmark: the host (Python) time of a served decode step, per row, with the forward pass left out.

A small model on a GPU is bound by this time, not by the device: what the worker does on the host for every row
of a step. Timed per step, as the gRPC servicer runs it with two plans in flight: the next plan's bytes parsed and
converted (`plan_from_pb`), `Runner.step` on the current plan with that next plan in sight (the table applied, the
next step's inputs built and launched behind this one, this step's tokens collected and put in place), and the
result converted (`result_to_pb`) and serialised. Every class is the worker's own (Runner, SequenceTable,
ModelRunner, DecodeInputs, Sampler, DeviceTokens), on a tiny random Llama on the CPU, except the decode graph's
replay: `HostOnlyGraphs` fills and copies the graph's inputs as `DecodeGraphs` does and replays nothing, so a
decode step's logits and argmax are whatever its buffers hold. The sampler's device part runs on the CPU as a few
tensor ops per step over a tiny vocabulary, except the Gumbel race: its torch reference hashes every logit (one
Triton kernel launch on a GPU) and would dominate, so the CPU's race is an argmax of the same shape here.

Rows decode one token per step (a prefix-cache hit leaves each new sequence one token to run, so every step is a
graphed decode); each sequence gets a new block every 16 steps, staggered, as the scheduler sends them.

`--mixed D,P,L` times mixed steps instead, as a busy server runs them while requests keep arriving: D rows decoding
and P new prompts of L tokens each, run whole, a step (the P oldest sequences finish as the new ones come). Such a
step is past the decode graphs and runs eagerly; its forward pass (`CausalDecoder.forward`) is left out and gives
zeros, so what is timed is the step's host work around it: the table, the step's inputs, its attention metadata
and their copy, the logits of the sampling rows and the sampler.

    python bench/worker_host.py --out-name worker_host_cpu_before     # on the tree before a change
    python bench/worker_host.py --out-name worker_host_cpu --before worker_host_cpu_before
    python bench/worker_host.py --mixed 900,24,300 --out-name worker_host_mixed_cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import torch  # noqa: E402
from flashstream.v1 import common_pb2, worker_pb2  # noqa: E402

from bench.common import RESULTS_DIR, replaced, write_results  # noqa: E402
from services.common.sampling import SamplingParams  # noqa: E402
from services.common.stage import freeze_startup_heap  # noqa: E402
from services.worker import sampler as sampler_module  # noqa: E402
from services.worker.attention_metadata import AttentionMetadata  # noqa: E402
from services.worker.build import build_engine  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.cuda_graphs import DecodeGraphs, batch_buckets, context_buckets  # noqa: E402
from services.worker.decode_inputs import DecodeInputs  # noqa: E402
from services.worker.engine import WorkerEngine  # noqa: E402
from services.worker.kv_cache import KVCache  # noqa: E402
from services.worker.models.decoder import CausalDecoder  # noqa: E402
from services.worker.pb import plan_from_pb, result_to_pb  # noqa: E402

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
    "eos_token_id": 1, "torch_dtype": "float32",
}
MODES: dict[str, SamplingParams] = {
    "greedy": SamplingParams(max_tokens=4096, ignore_eos=True),
    "t1": SamplingParams(max_tokens=4096, ignore_eos=True, temperature=1.0),
}
PROMPT_LEN = 40
BLOCK_SIZE = 16
MIXED_CONTEXT = 300  # tokens each decode row of the mixed steps holds when they begin
PHASE_LABELS = (("plan_in", "plan_in"), ("step", "runner_step"), ("result_out", "result_out"))  # time_steps' phases


class _NoReplay:
    def replay(self) -> None:
        pass


class _NoWait:
    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class HostOnlyGraphs(DecodeGraphs):
    """DecodeGraphs on the CPU with its replay left out: the same staging array and `DecodeInputs.fill`, the same
    graph choice and copy of the inputs, every (bucket, context) graph present and replaying nothing."""

    def __init__(self, model: CausalDecoder, kv_cache: KVCache, max_num_seqs: int, max_model_len: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.buckets = batch_buckets(max_num_seqs)
        # One unsplit graph per bucket: the split count only shapes the device's work.
        self.contexts = {bs: context_buckets(bs, 1, max_model_len, 0, kv_cache.block_size, kv_cache.data.device)
                         for bs in self.buckets}
        self.max_blocks = -(-max_model_len // kv_cache.block_size)
        n = self.buckets[-1]
        self.staging = torch.zeros(DecodeInputs.size(n, self.max_blocks), dtype=torch.int32)
        self.inputs = DecodeInputs(self.staging.numpy(), n, self.max_blocks, kv_cache.block_size)
        self.static = self.staging.clone()
        self.input_ids = DecodeInputs.fields(self.static, n)[0]
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32)
        self.logits = torch.zeros((n, model.cfg.vocab_size), dtype=torch.float32)  # [n, vocab]
        self.sampled = torch.zeros(n, dtype=torch.int64)  # [n]
        self.sampled_host = torch.zeros(n, dtype=torch.int64)
        self.graphs = {(bs, limit): _NoReplay() for bs in self.buckets for limit, _ in self.contexts[bs]}
        self.num_rows = 0
        self.last_key = None
        self.copied = _NoWait()

    def token_ids_of(self) -> list[int]:
        return self.sampled_host[: self.num_rows].copy_(self.sampled[: self.num_rows]).tolist()


def race_left_out() -> AbstractContextManager[None]:
    """The sampler's CPU race as `race_stand_in` while measuring."""
    return replaced(sampler_module, "gumbel_race_ref", race_stand_in)


def race_stand_in(x: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The race's output, [num_draws] int64, without its per-logit hashing (device work on a GPU)."""
    return (x if rows is None else x.index_select(0, rows)).argmax(dim=-1)


def forward_left_out(model: CausalDecoder, input_ids: torch.Tensor, meta: AttentionMetadata,
                     kv_caches: list[Any]) -> torch.Tensor:
    """`CausalDecoder.forward` of a mixed step without its device work: zero hidden states [num_tokens, hidden]."""
    return torch.zeros(input_ids.shape[0], model.cfg.hidden_size)


def build(folder: Path, max_num_seqs: int, max_model_len: int, num_kv_blocks: int,
          max_num_batched_tokens: int = 2048) -> WorkerEngine:
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    engine = build_engine(WorkerConfig(
        model=str(folder), load_format="dummy", device="cpu", dtype="float32", block_size=BLOCK_SIZE,
        num_kv_blocks=num_kv_blocks, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(max_num_seqs, max_num_batched_tokens),
    ))
    executor = engine.runner.executor
    executor.graphs = HostOnlyGraphs(executor.model, executor.kv_cache, max_num_seqs, max_model_len)
    return engine


def plan_bytes(num_rows: int, num_steps: int, params: SamplingParams, block_size: int = BLOCK_SIZE) -> list[bytes]:
    """The scheduler's plans as sent: the first sends every sequence whole (all but its last prompt token cached),
    each later one continues them all by one token, with the blocks that token needs."""
    blocks_per_seq = -(-(PROMPT_LEN + num_steps) // block_size)
    sampling = params.to_pb(common_pb2.SamplingParams)
    plans = []
    first = worker_pb2.StepPlan(step_id=0)
    for seq_id in range(num_rows):
        # Each sequence's prompt is a little longer than the last, so block boundaries are staggered.
        prompt_len = PROMPT_LEN - seq_id % block_size
        prompt = [(seq_id * 31 + i * 7) % 250 + 2 for i in range(prompt_len)]
        first_block = seq_id * blocks_per_seq
        first.new_seqs.add(seq_id=seq_id, token_ids=prompt, num_prompt_tokens=prompt_len, sampling=sampling,
                           block_ids=range(first_block, first_block + -(-prompt_len // block_size)),
                           num_computed_tokens=prompt_len - 1, num_scheduled_tokens=1)
    plans.append(first.SerializeToString())
    for step in range(1, num_steps):
        plan = worker_pb2.StepPlan(step_id=step)
        cached = plan.cached_seqs
        cached.seq_ids.extend(range(num_rows))
        cached.num_scheduled_tokens.extend([1] * num_rows)
        for seq_id in range(num_rows):
            position = PROMPT_LEN - seq_id % block_size - 1 + step  # of the token this step runs
            grows = position % block_size == 0
            cached.num_new_blocks.append(int(grows))
            if grows:
                cached.new_block_ids.append(seq_id * blocks_per_seq + position // block_size)
        plans.append(plan.SerializeToString())
    return plans


def mixed_plan_bytes(decode_rows: int, prompts: int, prompt_len: int, num_steps: int, params: SamplingParams,
                     block_size: int = BLOCK_SIZE) -> list[bytes]:
    """The scheduler's plans of mixed steps: the first sends decode_rows + prompts sequences whole, all but their
    last token cached (contexts of MIXED_CONTEXT tokens, staggered over a block); each later one finishes the
    `prompts` oldest, continues the other decode_rows by one token with the blocks they need, and sends `prompts`
    new sequences of prompt_len tokens to run whole."""
    sampling = params.to_pb(common_pb2.SamplingParams)
    free = list(range(num_blocks_for_mixed(decode_rows, prompts, prompt_len, num_steps) - 1, -1, -1))
    lengths: dict[int, int] = {}  # live sequence -> its tokens, the one sampled last step included
    tables: dict[int, list[int]] = {}  # live sequence -> its blocks
    first = worker_pb2.StepPlan(step_id=0)
    for seq_id in range(decode_rows + prompts):
        length = MIXED_CONTEXT - seq_id % block_size
        tables[seq_id] = [free.pop() for _ in range(-(-length // block_size))]
        first.new_seqs.add(seq_id=seq_id, token_ids=[(seq_id * 31 + i * 7) % 250 + 2 for i in range(length)],
                           num_prompt_tokens=length, sampling=sampling, block_ids=tables[seq_id],
                           num_computed_tokens=length - 1, num_scheduled_tokens=1)
        lengths[seq_id] = length
    plans = [first.SerializeToString()]
    next_id = decode_rows + prompts
    for step in range(1, num_steps):
        plan = worker_pb2.StepPlan(step_id=step)
        for seq_id in sorted(lengths)[:prompts]:
            del lengths[seq_id]
            free.extend(tables.pop(seq_id))
            plan.finished_seq_ids.append(seq_id)
        cached = plan.cached_seqs
        for seq_id, position in lengths.items():  # the position this step runs: the token sampled last step
            cached.seq_ids.append(seq_id)
            cached.num_scheduled_tokens.append(1)
            grows = position % block_size == 0
            cached.num_new_blocks.append(int(grows))
            if grows:
                tables[seq_id].append(free.pop())
                cached.new_block_ids.append(tables[seq_id][-1])
            lengths[seq_id] = position + 1
        for _ in range(prompts):
            tables[next_id] = [free.pop() for _ in range(-(-prompt_len // block_size))]
            plan.new_seqs.add(seq_id=next_id, token_ids=[(next_id * 17 + i * 5) % 250 + 2 for i in range(prompt_len)],
                              num_prompt_tokens=prompt_len, sampling=sampling, block_ids=tables[next_id],
                              num_computed_tokens=0, num_scheduled_tokens=prompt_len)
            lengths[next_id] = prompt_len
            next_id += 1
        plans.append(plan.SerializeToString())
    return plans


def num_blocks_for_mixed(decode_rows: int, prompts: int, prompt_len: int, num_steps: int) -> int:
    """KV blocks the live sequences of `mixed_plan_bytes` can hold at once, with room to spare."""
    longest = max(MIXED_CONTEXT, prompt_len) + num_steps
    return (decode_rows + 2 * prompts) * (-(-longest // BLOCK_SIZE) + 1)


def time_steps(engine: WorkerEngine, plans: list[bytes], warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each phase, the first `warmup` steps left out; the runner's table is new."""
    runner = engine.runner
    table = runner.new_table()
    times: dict[str, list[float]] = {"plan_in": [], "step": [], "result_out": [], "total": [], "total_cpu": []}
    nxt = plan_from_pb(worker_pb2.StepPlan.FromString(plans[0]))
    for k in range(len(plans) - 1):
        plan = nxt
        c0 = time.thread_time()
        t0 = time.perf_counter()
        nxt = plan_from_pb(worker_pb2.StepPlan.FromString(plans[k + 1]))
        t1 = time.perf_counter()
        result = runner.step(plan, table, next_plan=nxt)
        t2 = time.perf_counter()
        result_to_pb(result).SerializeToString()
        t3 = time.perf_counter()
        c3 = time.thread_time()
        if result.errors:
            raise RuntimeError(f"step {plan.step_id}: {result.errors[0].error.message}")
        if k >= warmup:
            for name, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, c3 - c0)):
                times[name].append(value)
    return times


def time_repeats(engine: WorkerEngine, plans: list[bytes], warmup: int, repeats: int) -> dict[str, list[float]]:
    """`time_steps` run `repeats` times, each phase's timed steps of every run together."""
    phases: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, values in time_steps(engine, plans, warmup).items():
            phases.setdefault(name, []).extend(values)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="64,256,1024", help="decode rows per step")
    parser.add_argument("--modes", default=",".join(MODES), help=f"sampling of every row: {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=8, help="steps run before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median step of all counts")
    parser.add_argument("--mixed", default="", metavar="D,P,L", help="time mixed steps of D decode rows and P new "
                        "prompts of L tokens instead (with --modes; --rows is ignored)")
    parser.add_argument("--before", default="", help="a results file of this benchmark (<out-dir>/<name>.json) "
                        "measured on the code before a change: its figures go beside these")
    parser.add_argument("--out-name", default="", help="write bench/results/<name>.json and .md")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    if args.mixed:
        decode_rows, prompts, prompt_len = (int(x) for x in args.mixed.split(","))
        cases = measure_mixed(decode_rows, prompts, prompt_len, modes, args.steps, args.warmup, args.repeats)
        results = {"cases": cases, "model": TINY_LLAMA, "mixed_context": MIXED_CONTEXT, "block_size": BLOCK_SIZE}
        lines = mixed_table(cases)
    else:
        cases = measure([int(r) for r in args.rows.split(",")], modes, args.steps, args.warmup, args.repeats)
        results = {"cases": cases, "model": TINY_LLAMA, "prompt_len": PROMPT_LEN, "block_size": BLOCK_SIZE}
        lines = table(cases)
    if args.before:
        before = json.loads((Path(args.out_dir) / f"{args.before}.json").read_text())
        results["before"] = {"name": args.before, "environment": before["environment"]}
        lines += ["", *compare(cases, before["cases"], args.before, mixed=bool(args.mixed))]
    if args.out_name:
        print(write_results(args.out_name, results, "\n".join(lines), Path(args.out_dir)))
    else:
        print("\n".join(lines))


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Everything allocated so far out of the garbage collector's reach inside the block, as every stage does once
    started (`freeze_startup_heap`): collections walk only what steps allocate."""
    freeze_startup_heap()
    try:
        yield
    finally:
        gc.unfreeze()


def measure(rows: list[int], modes: list[str], steps: int, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """One case per (mode, rows): per-row figures of the median step (and of the fastest) over every repeat."""
    num_steps = warmup + steps + 1
    max_len = PROMPT_LEN + num_steps + BLOCK_SIZE
    with tempfile.TemporaryDirectory() as folder, race_left_out():
        engine = build(Path(folder), max(rows), max_len, max(rows) * -(-max_len // BLOCK_SIZE))
        with frozen_heap():
            cases = [measure_case(engine, mode, n, num_steps, warmup, repeats) for mode in modes for n in rows]
    return cases


def measure_case(engine: WorkerEngine, mode: str, n: int, num_steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    phases = time_repeats(engine, plan_bytes(n, num_steps, MODES[mode]), warmup, repeats)
    median = {name: statistics.median(v) for name, v in phases.items()}
    case = {"mode": mode, "rows": n, "steps": len(phases["total"]),
            "us_per_row": round(median["total"] * 1e6 / n, 3),
            "cpu_us_per_row": round(median["total_cpu"] * 1e6 / n, 3),
            "best_us_per_row": round(min(phases["total"]) * 1e6 / n, 3),
            "step_ms": round(median["total"] * 1e3, 3),
            **{f"{name}_us_per_row": round(median[name] * 1e6 / n, 3) for name in ("plan_in", "step", "result_out")}}
    print(json.dumps(case), flush=True)
    return case


def measure_mixed(decode_rows: int, prompts: int, prompt_len: int, modes: list[str], steps: int, warmup: int,
                  repeats: int) -> list[dict[str, Any]]:
    """One case per mode: milliseconds of the median step (and of the fastest) over every repeat, per phase."""
    num_steps = warmup + steps + 1
    rows = decode_rows + prompts
    max_len = max(MIXED_CONTEXT, prompt_len) + num_steps + BLOCK_SIZE
    budget = decode_rows + prompts * prompt_len
    with (tempfile.TemporaryDirectory() as folder, race_left_out(),
          replaced(CausalDecoder, "forward", forward_left_out)):
        engine = build(Path(folder), rows, max_len, num_blocks_for_mixed(decode_rows, prompts, prompt_len, num_steps),
                       budget)
        with frozen_heap():
            cases = []
            for mode in modes:
                plans = mixed_plan_bytes(decode_rows, prompts, prompt_len, num_steps, MODES[mode])
                phases = time_repeats(engine, plans, warmup, repeats)
                median = {name: statistics.median(v) for name, v in phases.items()}
                case = {"mode": mode, "decode_rows": decode_rows, "prompts": prompts, "prompt_len": prompt_len,
                        "tokens": budget, "steps": len(phases["total"]),
                        "step_ms": round(median["total"] * 1e3, 3), "cpu_ms": round(median["total_cpu"] * 1e3, 3),
                        "best_ms": round(min(phases["total"]) * 1e3, 3),
                        **{f"{label}_ms": round(median[name] * 1e3, 3) for name, label in PHASE_LABELS}}
                print(json.dumps(case), flush=True)
                cases.append(case)
    return cases


MIXED_COLUMNS = (("mode", "mode"), ("decode rows", "decode_rows"), ("prompts", "prompts"),
                 ("tokens a prompt", "prompt_len"), ("tokens a step", "tokens"), ("step ms", "step_ms"),
                 ("CPU ms", "cpu_ms"), ("best ms", "best_ms"), ("plan in ms", "plan_in_ms"),
                 ("runner step ms", "runner_step_ms"), ("result out ms", "result_out_ms"))


def mixed_table(cases: list[dict[str, Any]]) -> list[str]:
    intro = ("Host time of one served mixed step of the worker: decode rows and new prompts run whole, the forward "
             "pass left out (see bench/worker_host.py). Median step over every timed step; CPU: the thread's CPU time; "
             "best: the fastest step. Phases: the next plan parsed and converted, `Runner.step` with that plan in "
             "sight (overlap path), the result converted and serialised.")
    header = "| " + " | ".join(title for title, _ in MIXED_COLUMNS) + " |"
    rows = ["| " + " | ".join(str(c[key]) for _, key in MIXED_COLUMNS) + " |" for c in cases]
    return [intro, "", header, "|---" * len(MIXED_COLUMNS) + "|", *rows]


def compare(cases: list[dict[str, Any]], before: list[dict[str, Any]], name: str, mixed: bool = False) -> list[str]:
    """Each case beside the same case (mode and rows) of `before`: us per row of decode steps, ms of mixed steps."""
    rows, median, best, unit = (("decode_rows", "step_ms", "best_ms", "ms") if mixed
                                else ("rows", "us_per_row", "best_us_per_row", "us per row"))
    lines = [f"Before the change (`{name}.md`, its tree and command there): {unit} of the median and of the fastest "
             "step, and how many times faster this run is.", "",
             f"| mode | {rows.replace('_', ' ')} | before | best before | now | best now | x (median) | x (best) |",
             "|---|---|---|---|---|---|---|---|"]
    old = {(c["mode"], c[rows]): c for c in before}
    for c in cases:
        b = old.get((c["mode"], c[rows]))
        if b is not None:
            lines.append(f"| {c['mode']} | {c[rows]} | {b[median]} | {b[best]} | {c[median]} | {c[best]} | "
                         f"{b[median] / c[median]:.2f} | {b[best] / c[best]:.2f} |")
    return lines


def table(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Host time of one served decode step of the worker per row (median step over every timed step; the "
        "decode graph's replay left out, see bench/worker_host.py): the next plan parsed and converted, "
        "`Runner.step` with that plan in sight (overlap path), the result converted and serialised. CPU: the "
        "thread's CPU time (time.thread_time); best: the fastest step, the least disturbed by other processes on the "
        "machine.", "",
        "| mode | rows | us per row | CPU us per row | best us per row | step ms | plan in us/row "
        "| runner step us/row | result out us/row |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(f"| {c['mode']} | {c['rows']} | {c['us_per_row']} | {c['cpu_us_per_row']} "
                     f"| {c['best_us_per_row']} | {c['step_ms']} | {c['plan_in_us_per_row']} "
                     f"| {c['step_us_per_row']} | {c['result_out_us_per_row']} |")
    lines += ["", "Per row beyond a fixed cost per step: the slope of step time over rows between the fewest and the "
                  "most rows of each mode, and that fixed cost (the intercept), of the median and of the fastest "
                  "steps.",
              "", "| mode | rows | us per row (slope) | best us per row (slope) | fixed us per step "
              "| best fixed us per step |",
              "|---|---|---|---|---|---|"]
    for mode, (slope, fixed, best_slope, best_fixed) in marginal(cases).items():
        rows = [c["rows"] for c in cases if c["mode"] == mode]
        lines.append(f"| {mode} | {min(rows)} to {max(rows)} | {slope} | {best_slope} | {fixed} | {best_fixed} |")
    return lines


def marginal(cases: list[dict[str, Any]]) -> dict[str, tuple[float, float, float, float]]:
    """Per mode with two row counts or more: (us per row, fixed us per step) of the line through the median steps
    of the fewest and the most rows, then the same through the fastest steps."""
    out = {}
    for mode in dict.fromkeys(c["mode"] for c in cases):
        mine = sorted((c for c in cases if c["mode"] == mode), key=lambda c: c["rows"])
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        figures = []
        for key in ("us_per_row", "best_us_per_row"):
            slope = (hi[key] * hi["rows"] - lo[key] * lo["rows"]) / (hi["rows"] - lo["rows"])
            figures += [round(slope, 3), round(lo[key] * lo["rows"] - slope * lo["rows"], 1)]
        out[mode] = (figures[0], figures[1], figures[2], figures[3])
    return out


if __name__ == "__main__":
    main()
