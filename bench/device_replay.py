"""The real scheduler replayed over a modelled device: the throughput the device allows a workload under the
scheduler's policy.

The scheduler (`services.scheduler.engine.Engine`: its policy, block manager, preemptions and plans in flight) runs
in-process on a simulated clock, answered by `bench.scheduler.SyntheticWorker` (one token per sequence that reaches
the end of its known tokens, never an EOS id). Each plan costs the device the time `StepCost` gives for its prompt
tokens, decode rows and the keys they attend over, fitted to the engine benchmark's per-step device times on the
H200 (`bench/results/engine_h200.md`; `PROFILED` holds the rows, the markdown shows how well each is reproduced).
The device runs plans back to back in the order sent; a result comes back at its plan's end, when the scheduler
processes it, takes its events and plans again. As many plans are in flight as the config's max_steps_in_flight
(3 by default; 1 gives the plan-run-answer loop with no overlap), and planning takes no time, so the device never
waits for a plan: device-bound by construction. Requests arrive all at once or in a closed loop of fixed
concurrency (a new one when one finishes, at the simulated time it finished), with output lengths forced
(`ignore_eos`), as the serving benchmark's sets (`bench.serve_data`).

What it is for: the throughput the modelled device allows a workload under the real scheduler's policy. Where a
measured run (`bench/serve.py`) falls short of the replay, the gap is in the stack (host time, the wire) or in what
the kernels cost on that workload that the fitted costs do not say; where a target is above the replay, no
scheduling change of these steps reaches it. The fitted costs read low for decode steps of a few hundred rows and
for the 1B's steps of one prompt beside decode rows (the fit table says by how much), so the replay is a ceiling
rather than a prediction.

Left out: host time and the wire (the device never waits for a plan); the clock the board drops to at its power
limit under a long run (the fits come from short profiled runs); prefix-cache hits, unless asked for (every
request's tokens differ from the others' unless `shared_prefix` is given).

    python -m bench.device_replay [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, write_results
from bench.scheduler import SyntheticWorker
from bench.serve_data import sharegpt_lengths
from services.common.sampling import SamplingParams
from services.common.step import StepPlan, StepResult
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.request_events import NewTokens, Request, RequestDone
from services.scheduler.sequence import Sequence as SchedSequence

BLOCK_SIZE = 16
ALL_AT_ONCE = 0  # `arrival` for every request added at time 0; a positive value is a closed loop's concurrency
EOS_TOKEN_ID = 2
KINDS = ("prompt", "mixed", "decode")  # steps of prompt tokens only, of both, of decode rows only


@dataclass(frozen=True)
class StepCost:
    """A step's device time in ms from what it runs: prompt tokens, decode rows, the keys its decode rows attend
    over and the (token, key) pairs of its prompt rows. The GEMMs cost the weight-read floor or a rate per token,
    whichever is more, at the prompt rate in any step holding prompt tokens (the per-token rates differ: `fit`)."""

    floor_ms: float  # every weight read once: a step of few rows costs this whatever its size
    decode_token_ms: float
    prompt_token_ms: float
    context_token_ms: float
    prompt_pair_ms: float = 0.0
    row_ms: float = 0.0  # elementwise kernels (activation, norms, rotary, cache write) and sampling
    step_ms: float = 0.0  # the same kernels' own floor: per layer launches of a small step

    def ms(self, prompt_tokens: int, decode_rows: int, context_tokens: float, prompt_pairs: float = 0) -> float:
        tokens = prompt_tokens + decode_rows
        rate = self.prompt_token_ms if prompt_tokens else self.decode_token_ms
        return (max(self.floor_ms, rate * tokens) + self.context_token_ms * context_tokens
                + self.prompt_pair_ms * prompt_pairs + self.step_ms + self.row_ms * tokens)


@dataclass(frozen=True)
class ProfiledStep:
    """A row of engine_h200.md's "device time per step by part" (ms) with the shape of the step it timed."""

    label: str
    prompt_tokens: int
    decode_rows: int
    context_tokens: float
    prompt_pairs: float
    device_ms: float
    gemm_ms: float
    attention_ms: float

    @property
    def rest_ms(self) -> float:
        return self.device_ms - self.gemm_ms - self.attention_ms


# bench/engine.py's order of steps puts the keys a decode row attends over at its prompt + 4 + 32 + 32 + 1..8 in
# the eight profiled decode steps (warm-up, timed, overlapped, profiled), and 24 steps later in the mixed steps,
# whose decode rows are min(batch, max_num_seqs - 1) beside a new prompt of the same length.
_KEYS_PAST_PROMPT = 4 + 32 + 32 + 4.5
_MIXED_KEYS_LATER = 24
_ENGINE_MAX_NUM_SEQS = 1024
ENGINE_RESULTS = RESULTS_DIR / "engine_h200.json"


def _pairs(num_prompts: int, length: int) -> float:
    return num_prompts * length * (length + 1) / 2


def profiled_steps(engine_results: dict[str, Any]) -> dict[str, tuple[ProfiledStep, ...]]:
    """Each model's profiled steps in an engine benchmark's results (`bench/engine.py --profile-batches`, its
    "device time per step by part"), by model, with the shape of the step each one timed."""
    out = {}
    for model in engine_results["results"]:
        rows: list[ProfiledStep] = []

        def add(label: str, shape: tuple[int, int, float, float], kernels: dict[str, Any]) -> None:
            parts = kernels["parts_ms_per_step"]
            rows.append(ProfiledStep(label, *shape, kernels["device_ms_per_step"], parts["gemm"], parts["attention"]))

        one = model["prefill_batch1"]
        add(f"prefill of one prompt of {one['prompt_len']}", (one["prompt_len"], 0, 0.0, _pairs(1, one["prompt_len"])),
            one["kernels"])
        profiled = [d for d in model["decode"] if "kernels" in d]
        for d in profiled:
            keys = d["mixed"]["new_prompt_len"] + _KEYS_PAST_PROMPT
            add(f"decode batch {d['batch']}", (0, d["batch"], d["batch"] * keys, 0.0), d["kernels"])
        for d in profiled:
            mixed = d["mixed"]
            new, rows_beside = mixed["new_prompt_len"], min(d["batch"], _ENGINE_MAX_NUM_SEQS - 1)
            keys = new + _KEYS_PAST_PROMPT + _MIXED_KEYS_LATER
            add(f"decode batch {d['batch']} + one prompt of {new}", (new, rows_beside, rows_beside * keys,
                                                                     _pairs(1, new)), mixed["kernels"])
        prefill = model["prefill"]
        add(f"prefill step of {prefill['seqs_per_step']} x {prefill['prompt_len']} tokens",
            (prefill["seqs_per_step"] * prefill["prompt_len"], 0, 0.0,
             _pairs(prefill["seqs_per_step"], prefill["prompt_len"])), prefill["kernels"])
        out[model["model"]] = tuple(rows)
    return out


PROFILED = profiled_steps(json.loads(ENGINE_RESULTS.read_text()))


def fit(rows: Sequence[ProfiledStep]) -> StepCost:
    """StepCost from a preset's profiled rows: the floor is the GEMMs of 64 decode rows (every weight read once,
    the rows' share small); the decode and prompt rates are the GEMMs per token of 1,024 decode rows and of the
    16 x 512 prefill step. Prompt tokens skip the output projection (the prefill step runs it once, for its 16
    sampling rows), which is a fifth of the 1B's decode GEMM time at 1,024 rows (0.71 of 3.38 ms) and a
    fourteenth of the 8B's (1.42 of 20.3), so the 1B's prompt rate is the lower one; the 8B's prefill GEMMs run
    slower per token than its decode ones all the same. The per-key rates are the attention of those two steps;
    the rest of the step (device time less GEMMs and attention) is a line through 64 and 1,024 decode rows."""
    by = {r.label: r for r in rows}
    small, large, prefill = by["decode batch 64"], by["decode batch 1024"], by["prefill step of 16 x 512 tokens"]
    row_ms = (large.rest_ms - small.rest_ms) / (large.decode_rows - small.decode_rows)
    return StepCost(
        floor_ms=small.gemm_ms,
        decode_token_ms=large.gemm_ms / large.decode_rows,
        prompt_token_ms=prefill.gemm_ms / prefill.prompt_tokens,
        context_token_ms=large.attention_ms / large.context_tokens,
        prompt_pair_ms=prefill.attention_ms / prefill.prompt_pairs,
        row_ms=row_ms,
        step_ms=small.rest_ms - row_ms * small.decode_rows,
    )


COSTS = {preset: fit(rows) for preset, rows in PROFILED.items()}


@dataclass
class ReplayResult:
    """What a replay gave: simulated seconds, tokens, TTFT and the steps the device ran."""

    duration_s: float
    num_requests: int
    output_tokens: int
    ttft_p50_s: float
    ttft_p99_s: float
    steps: dict[str, int]  # by kind (KINDS)
    device_s: dict[str, float]  # summed device time by the same kinds
    prompt_tokens: int  # recomputed tokens of preempted sequences included; prefix-cache hits not
    decode_rows: int
    preemptions: int
    # (arrival, first token, finish) simulated seconds of each request, in the order given
    timelines: list[tuple[float, float, float]] = field(default_factory=list, repr=False)

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s else 0.0

    @property
    def device_busy(self) -> float:
        return sum(self.device_s.values()) / self.duration_s if self.duration_s else 0.0


class StepShapes:
    """The worker's view of each sequence's tokens, to tell what a plan runs: a scheduled token below the tokens
    the sequence was sent with is a prompt token (a prompt chunk, or a preempted sequence recomputed), one past
    them is a decode row."""

    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = {}  # seq id -> [tokens with KV, tokens it was sent with]

    def shape(self, plan: StepPlan) -> tuple[int, int, int, int]:
        """(prompt tokens, decode rows, keys the decode rows attend over, (token, key) pairs of the prompt rows)."""
        prompt = rows = context = pairs = 0
        seqs = self.seqs
        for seq_id in plan.finished_seq_ids:
            seqs.pop(seq_id, None)
        runs = [(new.seq_id, new.num_scheduled_tokens) for new in plan.new_seqs]
        for new in plan.new_seqs:
            seqs[new.seq_id] = [new.num_computed_tokens, len(new.token_ids)]
        runs += zip(plan.cached_seqs.seq_ids, plan.cached_seqs.num_scheduled_tokens)
        for seq_id, num in runs:
            state = seqs[seq_id]
            computed, known = state
            if computed >= known:
                rows += num
                context += num * computed + num * (num + 1) // 2
            else:
                prompt += num
                pairs += num * computed + num * (num + 1) // 2
            state[0] = computed + num
        return prompt, rows, context, pairs


def enough_limits(requests: Sequence[tuple[int, int]], config: SchedulerConfig) -> WorkerLimits:
    """Worker limits of the config's batch sizes with KV blocks for every request at once: nothing is preempted."""
    return WorkerLimits(
        block_size=BLOCK_SIZE, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        num_kv_blocks=sum(-(-(a + b) // BLOCK_SIZE) + 1 for a, b in requests), max_model_len=1 << 20,
        eos_token_ids=(EOS_TOKEN_ID,))


def prompt_ids(index: int, length: int, shared_prefix: int) -> tuple[int, ...]:
    """Token ids of request `index`: the shared prefix's, then its own id repeated, which no other request holds,
    so no block of it past the prefix is found in the prefix cache. Never the EOS id."""
    shared = min(shared_prefix, length)
    return tuple(range(EOS_TOKEN_ID + 1, EOS_TOKEN_ID + 1 + shared)) + (
        EOS_TOKEN_ID + 1 + shared_prefix + index,) * (length - shared)


def replay(requests: Sequence[tuple[int, int]], config: SchedulerConfig, limits: WorkerLimits | None, cost: StepCost,
           arrival: int = ALL_AT_ONCE, shared_prefix: int = 0) -> ReplayResult:
    """Replays (input, output) length pairs through the scheduler over the modelled device. limits None:
    `enough_limits`. arrival ALL_AT_ONCE: every request at time 0; n > 0: a closed loop of n requests at a time.
    shared_prefix: that many leading tokens are the same in every request (prefix-cache hits)."""
    now = 0.0
    engine = Engine(config, limits or enough_limits(requests, config), clock=lambda: now)
    arrived: dict[Hashable, float] = {}
    first: dict[Hashable, float] = {}
    finished: dict[Hashable, float] = {}
    sequences: list[SchedSequence] = []
    pending = deque(enumerate(requests))

    def arrive() -> None:
        i, (num_in, num_out) = pending.popleft()
        arrived[i] = now
        sequences.append(engine.add(Request(i, prompt_ids(i, num_in, shared_prefix),
                                            SamplingParams(max_tokens=num_out, ignore_eos=True))))

    for _ in range(arrival or len(requests)):
        if pending:
            arrive()
    worker, shapes = SyntheticWorker(), StepShapes()
    in_flight: deque[tuple[float, StepResult]] = deque()  # (device end time, result), in the order sent
    device_free = 0.0
    steps = dict.fromkeys(KINDS, 0)
    device_s = dict.fromkeys(KINDS, 0.0)
    prompt_total = rows_total = out_tokens = 0
    while True:
        while engine.can_send():
            plan = engine.build_plan()
            if plan is None:
                break
            prompt, rows, context, pairs = shapes.shape(plan)
            result = worker.step(plan)
            if prompt or rows:  # else the plan only names finished sequences: no device time
                kind = "decode" if not prompt else "mixed" if rows else "prompt"
                s = cost.ms(prompt, rows, context, pairs) / 1e3
                steps[kind] += 1
                device_s[kind] += s
                prompt_total, rows_total = prompt_total + prompt, rows_total + rows
                device_free = max(device_free, now) + s
            in_flight.append((max(device_free, now), result))
        if not in_flight:
            if engine.has_work():  # a request deadline is all that can move the scheduler: wait for it
                deadline = engine.next_deadline()
                if deadline is None or deadline <= now:
                    raise RuntimeError("the scheduler holds work but plans nothing (too few KV blocks for a request?)")
                now = deadline
                continue
            break
        now, result = in_flight.popleft()
        engine.process_result(result)
        for event in engine.take_events():
            if isinstance(event, NewTokens):
                for key in event.keys:
                    first.setdefault(key, now)
                out_tokens += len(event.token_ids)
            elif isinstance(event, RequestDone):
                finished[event.key] = now
                if pending and arrival:
                    arrive()
    ttft = np.array([first[k] - arrived[k] for k in first])
    return ReplayResult(
        now, len(finished), out_tokens, float(np.percentile(ttft, 50)), float(np.percentile(ttft, 99)), steps,
        device_s, prompt_total, rows_total, sum(seq.num_preemptions for seq in sequences),
        [(arrived[i], first.get(i, float("nan")), finished.get(i, float("nan"))) for i in range(len(requests))])


def scenarios() -> list[tuple[str, str, list[tuple[int, int]], SchedulerConfig, int]]:
    """(name, preset, requests, scheduler config, arrival) of the default set: the serving suite's sets under its
    names ("256 per step": 256 sequences running at most), at the scheduler's defaults and at other budgets."""
    default = SchedulerConfig()
    at = dataclasses.replace
    sharegpt = sharegpt_lengths(1000, 0)
    fixed = [(1024, 128)] * 256
    return [
        ("8B ShareGPT 1000 at once", "llama-3.1-8b", sharegpt, default, ALL_AT_ONCE),
        ("8B ShareGPT 1000 at once, 2048 tokens per step", "llama-3.1-8b", sharegpt,
         at(default, max_num_batched_tokens=2048), ALL_AT_ONCE),
        ("8B ShareGPT 1000 at once, 16384 tokens per step", "llama-3.1-8b", sharegpt,
         at(default, max_num_batched_tokens=16384), ALL_AT_ONCE),
        ("8B 1024 in / 128 out, 64 concurrent, 256 requests", "llama-3.1-8b", fixed, default, 64),
        ("8B 1024 in / 128 out, 64 concurrent, 256 requests, 2048 tokens per step", "llama-3.1-8b", fixed,
         at(default, max_num_batched_tokens=2048), 64),
        ("1B ShareGPT 1000 at once", "llama-3.2-1b", sharegpt, default, ALL_AT_ONCE),
        ("1B ShareGPT 1000 at once, static, 256 per step", "llama-3.2-1b", sharegpt,
         at(default, max_num_seqs=256, policy="static"), ALL_AT_ONCE),
        ("1B ShareGPT 1000 at once, continuous, 256 per step", "llama-3.2-1b", sharegpt,
         at(default, max_num_seqs=256), ALL_AT_ONCE),
        ("1B ShareGPT 1000 at once, continuous, 256 per step, admit batch 1", "llama-3.2-1b", sharegpt,
         at(default, max_num_seqs=256, admit_batch=1), ALL_AT_ONCE),
    ]


def fit_rows() -> list[dict[str, Any]]:
    """Each profiled row's measured device time beside what its preset's StepCost gives for the same step."""
    out = []
    for preset, rows in PROFILED.items():
        for r in rows:
            modelled = COSTS[preset].ms(r.prompt_tokens, r.decode_rows, r.context_tokens, r.prompt_pairs)
            out.append({"preset": preset, "step": r.label, "measured_ms": r.device_ms, "modelled_ms": modelled,
                        "error_pct": 100 * (modelled / r.device_ms - 1)})
    return out


def markdown(rows: list[dict[str, Any]], fits: list[dict[str, Any]]) -> str:
    lines = ["The real scheduler replayed over the modelled device (StepCost per preset, no host time, the config's",
             "plans in flight): output tok/s, simulated seconds, TTFT, the device's busy share, and steps, device",
             "seconds by kind of step (prompt tokens only / mixed / decode rows only).", "",
             "| scenario | out tok/s | seconds | TTFT p50 / p99 s | busy | steps | device s | prompt tokens "
             "| decode rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = " / ".join(str(r["steps"][k]) for k in KINDS)
        device = " / ".join(f"{r['device_s'][k]:.2f}" for k in KINDS)
        lines.append(f"| {r['name']} | {r['output_throughput']:.0f} | {r['duration_s']:.2f} | {r['ttft_p50_s']:.2f} / "
                     f"{r['ttft_p99_s']:.2f} | {r['device_busy']:.0%} | {steps} | {device} | {r['prompt_tokens']} "
                     f"| {r['decode_rows']} |")
    lines += ["", "Step costs (ms), fitted to `engine_h200.md`'s device time per step by part:", "",
              "| preset | floor | per decode token | per prompt token | per decode key | per prompt pair | per row "
              "| per step |", "|---|---|---|---|---|---|---|---|"]
    for preset, c in COSTS.items():
        lines.append(f"| {preset} | {c.floor_ms:.3f} | {c.decode_token_ms:.5f} | {c.prompt_token_ms:.5f} "
                     f"| {c.context_token_ms:.3e} | {c.prompt_pair_ms:.3e} | {c.row_ms:.5f} | {c.step_ms:.3f} |")
    lines += ["", "The fit against every profiled step (decode rows attend over about 520 keys, 544 beside a prompt):",
              "", "| preset | step | measured ms | modelled ms | error |", "|---|---|---|---|---|"]
    for f in fits:
        lines.append(f"| {f['preset']} | {f['step']} | {f['measured_ms']:.3f} | {f['modelled_ms']:.3f} "
                     f"| {f['error_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    rows = []
    start = time.perf_counter()
    for name, preset, requests, config, arrival in scenarios():
        t0 = time.perf_counter()
        result = replay(requests, config, None, COSTS[preset], arrival)
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "timelines"}
        rows.append({"name": name, "preset": preset, "arrival": arrival, "scheduler": dataclasses.asdict(config),
                     **summary, "output_throughput": result.output_throughput, "device_busy": result.device_busy,
                     "replay_wall_s": round(time.perf_counter() - t0, 2)})
        print(f"{name}: {result.output_throughput:.0f} tok/s ({rows[-1]['replay_wall_s']} s)", flush=True)
    fits = fit_rows()
    md = markdown(rows, fits)
    print(md)
    write_results("device_replay", {"scenarios": rows, "costs": {k: dataclasses.asdict(c) for k, c in COSTS.items()},
                                    "fit": fits, "wall_s": round(time.perf_counter() - start, 2)}, md, args.out_dir)


if __name__ == "__main__":
    main()
