"""The real scheduler replayed over a modelled device: what throughput the device allows a workload.

The scheduler (`services.scheduler.engine.Engine`, its policy, block manager and plans in flight) runs in-process on
a simulated clock. Each plan it sends costs the device a time given by `StepCost`, fitted to the engine benchmark's
per-step device times on the H200 (`bench/results/engine_h200.md`); the device runs plans back to back in order,
and each result comes back at its plan's end, when the scheduler processes it and plans again. Requests arrive all
at once or in a closed loop of fixed concurrency, with output lengths forced (`ignore_eos`), as in the serving
benchmark's sets (`bench.serve_data`).

What it is for: where a measured run (`bench/serve.py`) falls short of the replay, the gap is in the stack (host
work, the wire) or in the kernels' costs on that workload; where a target is above the replay, no scheduling of
these steps reaches it. Left out: host time and the wire (the device never waits for a plan), a prompt's own
attention (small beside its GEMMs at these lengths), the clock the board drops to at its power limit (the fits come
from short runs), and prefix-cache hits (every request's tokens are distinct).

    python -m bench.device_replay [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, write_results
from bench.scheduler import SyntheticWorker
from bench.serve_data import sharegpt_lengths
from services.common.sampling import SamplingParams
from services.common.step import StepPlan
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.request_events import NewTokens, Request, RequestDone

BLOCK_SIZE = 16


@dataclass(frozen=True)
class StepCost:
    """A step's device time in ms: max(floor, rate * (p + r)) for its GEMMs (rate per token: `prompt_token_ms` in a
    step that holds prompt tokens, `decode_token_ms` otherwise), plus `context_token_ms` per key its decode rows
    attend over, plus `row_ms` per token for the elementwise kernels and sampling."""

    floor_ms: float  # every weight read once: a step of few rows costs this whatever its size
    decode_token_ms: float
    prompt_token_ms: float
    context_token_ms: float
    row_ms: float

    def ms(self, prompt_tokens: int, decode_rows: int, context_tokens: int) -> float:
        tokens = prompt_tokens + decode_rows
        rate = self.prompt_token_ms if prompt_tokens else self.decode_token_ms
        return max(self.floor_ms, rate * tokens) + self.context_token_ms * context_tokens + self.row_ms * tokens


# Fitted to engine_h200.md's "device time per step by part" tables.
COSTS = {
    # floor: the GEMMs of a decode step of 64 rows (4.2 ms); decode rate: 20.3 ms of GEMMs at 1,024 rows; prompt
    # rate: 183.5 ms of GEMMs for a 16 x 512 prefill step; attention: 17.2 ms at 1,024 rows of about 464 keys;
    # rows: activation, norms, rotary and sampling at 1,024 rows, about 1.2 ms.
    "llama-3.1-8b": StepCost(4.2, 0.0198, 0.0224, 3.6e-5, 0.0012),
    # floor: a batch-1 graph replay (1.27 ms); decode rate: 3.38 ms of GEMMs at 1,024 rows; prompt rate: 21.3 ms
    # for 16 x 512; attention: 4.76 ms at 1,024 rows of about 464 keys; rows: 0.57 ms of the rest at 1,024 rows.
    "llama-3.2-1b": StepCost(1.27, 0.0033, 0.0026, 1.0e-5, 0.00056),
}


@dataclass
class ReplayResult:
    duration_s: float
    num_requests: int
    output_tokens: int
    ttft_p50_s: float
    ttft_p99_s: float
    steps: dict[str, int]  # by kind: prompt (prompt tokens only), mixed, decode
    device_s: dict[str, float]  # summed device time by the same kinds
    prompt_tokens: int
    decode_rows: int

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s else 0.0


def step_shape(plan: StepPlan, computed: dict[int, int]) -> tuple[int, int, int]:
    """(prompt tokens, decode rows, keys the decode rows attend over) of a plan; advances `computed`, each
    sequence's tokens with KV, by what the plan runs. A row of one token of a sequence already sent is a decode
    row; every other scheduled token is a prompt token (a prompt chunk, or a preempted sequence recomputed)."""
    prompt = rows = context = 0
    for seq_id in plan.finished_seq_ids:
        computed.pop(seq_id, None)
    for new in plan.new_seqs:
        computed[new.seq_id] = new.num_computed_tokens + new.num_scheduled_tokens
        prompt += new.num_scheduled_tokens
    cached = plan.cached_seqs
    for seq_id, num in zip(cached.seq_ids, cached.num_scheduled_tokens):
        if num == 1:
            rows += 1
            context += computed[seq_id] + 1
        else:
            prompt += num
        computed[seq_id] += num
    return prompt, rows, context


def replay(lengths: Sequence[tuple[int, int]], config: SchedulerConfig, cost: StepCost, concurrency: int = 0,
           seed: int = 0) -> ReplayResult:
    """Replays requests of (input, output) lengths through the scheduler over the modelled device. concurrency 0:
    every request arrives at 0; otherwise a closed loop, a new request arriving as one finishes."""
    now = 0.0
    engine = Engine(config, WorkerLimits(
        block_size=BLOCK_SIZE, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        num_kv_blocks=sum(-(-(a + b) // BLOCK_SIZE) + 1 for a, b in lengths), max_model_len=1 << 20,
        eos_token_ids=(2,)), clock=lambda: now)
    rng = random.Random(seed)
    arrival: dict[Hashable, float] = {}
    first: dict[Hashable, float] = {}
    pending = deque(enumerate(lengths))

    def arrive() -> None:
        i, (num_in, num_out) = pending.popleft()
        key = ("replay", i)
        arrival[key] = now
        # Ids from 3 up: never the EOS id (2) the limits name, and distinct across requests (no prefix hits).
        engine.add(Request(key, tuple(rng.randrange(3, 1 << 30) for _ in range(num_in)),
                           SamplingParams(max_tokens=num_out, ignore_eos=True)))

    for _ in range(concurrency or len(lengths)):
        if pending:
            arrive()
    worker, computed = SyntheticWorker(), {}
    in_flight: deque[tuple[float, Any]] = deque()  # (device end time, result), in order
    device_free = 0.0
    steps = {"prompt": 0, "mixed": 0, "decode": 0}
    device_s = {"prompt": 0.0, "mixed": 0.0, "decode": 0.0}
    prompt_total = rows_total = out_tokens = 0
    while True:
        while engine.can_send():
            plan = engine.build_plan()
            if plan is None:
                break
            prompt, rows, context = step_shape(plan, computed)
            result = worker.step(plan)
            if prompt or rows:
                kind = "decode" if not prompt else "mixed" if rows else "prompt"
                ms = cost.ms(prompt, rows, context)
                steps[kind] += 1
                device_s[kind] += ms / 1e3
                prompt_total, rows_total = prompt_total + prompt, rows_total + rows
                device_free = max(device_free, now) + ms / 1e3
            in_flight.append((max(device_free, now), result))
        if not in_flight:
            if engine.has_work():  # a held seat's wait: move the clock to when it runs out
                deadline = engine.next_deadline()
                if deadline is None or deadline <= now:
                    raise RuntimeError("the scheduler holds work but plans nothing and names no time to wait for")
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
            elif isinstance(event, RequestDone) and pending and concurrency:
                arrive()
    ttft = np.array([first[k] - arrival[k] for k in first])
    return ReplayResult(now, len(first), out_tokens, float(np.percentile(ttft, 50)), float(np.percentile(ttft, 99)),
                        steps, device_s, prompt_total, rows_total)


def scenarios() -> list[tuple[str, str, list[tuple[int, int]], SchedulerConfig, int]]:
    """(name, preset, lengths, scheduler config, concurrency) of the default replay set: the serving suite's sets."""
    default = SchedulerConfig()
    sharegpt = sharegpt_lengths(1000, 0)
    fixed = [(1024, 128)] * 256
    return [
        ("8B ShareGPT 1000 at once", "llama-3.1-8b", sharegpt, default, 0),
        ("8B ShareGPT 1000 at once, 2048 tokens per step", "llama-3.1-8b", sharegpt,
         dataclasses.replace(default, max_num_batched_tokens=2048), 0),
        ("8B ShareGPT 1000 at once, 16384 tokens per step", "llama-3.1-8b", sharegpt,
         dataclasses.replace(default, max_num_batched_tokens=16384), 0),
        ("8B 1024 in / 128 out, 64 concurrent, 256 requests", "llama-3.1-8b", fixed, default, 64),
        ("8B 1024 in / 128 out, 64 concurrent, 2048 tokens per step", "llama-3.1-8b", fixed,
         dataclasses.replace(default, max_num_batched_tokens=2048), 64),
        ("1B ShareGPT 1000 at once", "llama-3.2-1b", sharegpt, default, 0),
        ("1B ShareGPT 1000 at once, static, 256 per step", "llama-3.2-1b", sharegpt,
         dataclasses.replace(default, max_num_seqs=256, policy="static"), 0),
        ("1B ShareGPT 1000 at once, continuous, 256 per step", "llama-3.2-1b", sharegpt,
         dataclasses.replace(default, max_num_seqs=256), 0),
        ("1B ShareGPT 1000 at once, continuous, 256 per step, admit batch 1", "llama-3.2-1b", sharegpt,
         dataclasses.replace(default, max_num_seqs=256, admit_batch=1), 0),
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["Replayed over the modelled device (StepCost per preset): output tok/s, simulated seconds, TTFT, and the "
             "steps and device seconds by kind of step (prompt tokens only / mixed / decode only)", "",
             "| scenario | out tok/s | seconds | TTFT p50 / p99 s | steps | device s | prompt tokens | decode rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = " / ".join(str(r["steps"][k]) for k in ("prompt", "mixed", "decode"))
        device = " / ".join(f"{r['device_s'][k]:.2f}" for k in ("prompt", "mixed", "decode"))
        lines.append(f"| {r['name']} | {r['output_throughput']:.0f} | {r['duration_s']:.2f} | {r['ttft_p50_s']:.2f} / "
                     f"{r['ttft_p99_s']:.2f} | {steps} | {device} | {r['prompt_tokens']} | {r['decode_rows']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    rows = []
    for name, preset, lengths, config, concurrency in scenarios():
        t0 = time.perf_counter()
        result = replay(lengths, config, COSTS[preset], concurrency)
        rows.append({"name": name, "preset": preset, "concurrency": concurrency,
                     "scheduler": dataclasses.asdict(config), "cost": dataclasses.asdict(COSTS[preset]),
                     **dataclasses.asdict(result), "output_throughput": result.output_throughput,
                     "replay_wall_s": round(time.perf_counter() - t0, 2)})
    md = markdown(rows)
    print(md)
    write_results("device_replay", {"scenarios": rows}, md, args.out_dir)


if __name__ == "__main__":
    main()
