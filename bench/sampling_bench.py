"""Sampling benchmark: the seeded Gumbel race as torch ops (the reference) and as one Triton kernel, and the whole
Sampler on temperature-1 rows (seeded, unseeded) against greedy rows, at one batch of logits.

Race: draws on fp32 logits [rows, vocab] with keys as seeded rows get them, timed per call as device time: on
CUDA, calls replayed as one CUDA graph (launch gaps included, no host work); on the CPU, wall time. Beside it
torch.argmax on the same logits (greedy's floor) and the kernel at other chunk sizes. The kernel's tokens are
checked against the reference's on the timed inputs.
Sampler: `sample_prepared` device time (host part done before, as the worker overlaps it with the forward pass)
and the whole call's host wall time (`sampler(logits, rows)`: prepare, sample, the one copy to the host), per
mode: greedy, temperature 1 seeded, temperature 1 unseeded, temperature 0.8 and top_p 0.95 seeded; and the seeded
temperature-1 mode with the race forced to the torch reference (what the sampler ran before the kernel).

    python bench/sampling_bench.py --out bench/results/sampling_h200          # on CUDA: 64 x 128256
    TRITON_INTERPRET=1 python bench/sampling_bench.py --device cpu --rows 4 --vocab 5000 --iters 3 \
        --out /tmp/sampling_cpu                                                # a rehearsal on the CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from bench.common import replaced, write_results  # noqa: E402
from kernels.gumbel_race import gumbel_race, gumbel_race_ref  # noqa: E402
from services.common.sampling import SamplingParams  # noqa: E402
from services.worker import sampler as sampler_module  # noqa: E402
from services.worker.sampler import Sampler, SamplingRow  # noqa: E402
from services.worker.sampling.noise import draw_key  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "t1_seeded": {"temperature": 1.0, "seed": 0},
    "t1_unseeded": {"temperature": 1.0},
    "t0.8_top_p0.95_seeded": {"temperature": 0.8, "top_p": 0.95, "seed": 0},
}


def device_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median ms per call: replayed as one CUDA graph of `iters` calls on CUDA, wall time on the CPU."""
    if device.type == "cuda":
        from bench.engine import graph_us

        return round(graph_us(lambda _: fn(), num_calls=iters) / 1e3, 4)
    return wall_ms(fn, iters)


def wall_ms(fn: Callable[[], object], iters: int) -> float:
    """Median host wall time per call in ms (the call's own sync included), after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 4)


def seeded_keys(num_rows: int, device: torch.device) -> torch.Tensor:
    """[num_rows, 2] int64: the keys of seeds 0.. at position 5."""
    return torch.tensor([draw_key(seed, 5) for seed in range(num_rows)], dtype=torch.int64, device=device)


def bench_race(logits: torch.Tensor, iters: int) -> dict[str, Any]:
    keys = seeded_keys(logits.shape[0], logits.device)
    want = gumbel_race_ref(logits, keys)
    got = gumbel_race(logits, keys)
    out: dict[str, Any] = {
        "tokens_equal_reference": got.tolist() == want.tolist(),
        "torch_reference_ms": device_ms(lambda: gumbel_race_ref(logits, keys), logits.device, iters),
        "kernel_ms": device_ms(lambda: gumbel_race(logits, keys), logits.device, iters),
        "argmax_ms": device_ms(lambda: logits.argmax(dim=-1), logits.device, iters),
        "kernel_ms_by_chunk": {},
    }
    for chunk in (1024, 2048, 8192):
        out["kernel_ms_by_chunk"][str(chunk)] = device_ms(
            lambda c=chunk: gumbel_race(logits, keys, chunk=c), logits.device, iters
        )
    out["speedup"] = round(out["torch_reference_ms"] / out["kernel_ms"], 1)
    return out


def race_in_torch() -> AbstractContextManager[None]:
    """The sampler's race as the torch reference on every device, as it was before the kernel."""
    return replaced(sampler_module, "gumbel_race", gumbel_race_ref)


def params_of_row(params: dict[str, Any], i: int) -> dict[str, Any]:
    """A mode's parameters for row i: a seeded mode gives each row its own seed."""
    return {**params, "seed": i} if "seed" in params else params


def bench_sampler(logits: torch.Tensor, iters: int) -> dict[str, dict[str, float]]:
    num_rows, vocab = logits.shape
    sampler = Sampler(vocab, [0])
    out = {}

    def measure(params: dict[str, Any]) -> dict[str, float]:
        rows = [SamplingRow(SamplingParams(max_tokens=64, **params_of_row(params, i)), [1, 2, 3], [4] * 5)
                for i in range(num_rows)]
        batch = sampler.prepare(logits, rows)
        return {
            "device_ms": device_ms(lambda: sampler.sample_prepared(logits, batch).token_ids, logits.device, iters),
            "call_wall_ms": wall_ms(lambda: sampler(logits, rows), iters),
        }

    for mode, params in MODES.items():
        out[mode] = measure(params)
    with race_in_torch():
        out["t1_seeded_torch_race"] = measure(MODES["t1_seeded"])
    greedy = out["greedy"]
    for mode, figures in out.items():
        figures["device_vs_greedy"] = round(figures["device_ms"] / greedy["device_ms"], 2)
        figures["call_wall_vs_greedy"] = round(figures["call_wall_ms"] / greedy["call_wall_ms"], 2)
    return out


def to_markdown(results: dict[str, Any]) -> str:
    race, shape = results["race"], f"{results['rows']} x {results['vocab']}"
    lines = [
        f"## Seeded race, fp32 logits {shape} ({results['device_kind']})", "",
        "| path | ms per call |", "|---|---|",
        f"| torch reference (the sampler's race before) | {race['torch_reference_ms']} |",
        f"| Triton kernel (chunk 4096) | {race['kernel_ms']} |",
        *(f"| Triton kernel, chunk {c} | {ms} |" for c, ms in race["kernel_ms_by_chunk"].items()),
        f"| torch.argmax alone (greedy's floor) | {race['argmax_ms']} |", "",
        f"Kernel tokens equal the reference's: {race['tokens_equal_reference']}; speedup {race['speedup']}x.", "",
        f"## Sampler, fp32 logits {shape}", "",
        "| mode | sample_prepared device ms | vs greedy | whole call wall ms | vs greedy |", "|---|---|---|---|---|",
    ]
    for mode, f in results["sampler"].items():
        lines.append(f"| {mode} | {f['device_ms']} | {f['device_vs_greedy']} | {f['call_wall_ms']} | "
                     f"{f['call_wall_vs_greedy']} |")
    lines += ["", "Device time: " + ("calls replayed as one CUDA graph." if results["device_kind"] == "cuda"
                                     else "host wall time (CPU).")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", required=True, help="path of the results without extension (.json and .md)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    logits = torch.randn(args.rows, args.vocab, generator=torch.Generator().manual_seed(0)).mul_(3).to(device)
    results = {"rows": args.rows, "vocab": args.vocab, "device_kind": device.type, "iters": args.iters}
    with torch.inference_mode():
        results["race"] = bench_race(logits, args.iters)
        results["sampler"] = bench_sampler(logits, args.iters)
    out = Path(args.out)
    write_results(out.name, results, to_markdown(results), out.parent)
    print(to_markdown(results))
    return 0 if results["race"]["tokens_equal_reference"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
