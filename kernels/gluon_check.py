"""One H100 run of the Gluon Hopper prefill kernel: correctness and TFLOP/s of several configs beside our Triton one.

    python -m kernels.gluon_check --out DIR        # writes DIR/gluon_check.json, prints a table as it goes

Each config runs in its own subprocess with a timeout (a deadlocked kernel cannot block the others): first a small
ragged batch (prefix hits, length-1 sequences, NaN-poisoned slots past the context) against the fp32 reference, then
d128 causal prefill at 4k / 8k / 16k (16k tokens per launch, 32 query heads, 8 kv heads, pages of 16 and 64 keys;
the 4k case also checked against SDPA flash) and d64 at 4k. The baseline (kernels.prefill_attention) is timed in the
same run the same way. Causal FLOPs as in kernels/bench.py: 4 * B * H * D * S * (S + 1) / 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

# name -> HopperPrefillConfig fields, the default first.
CONFIGS: dict[str, dict] = {
    "default": {},
    # Each schedule with and without the persistent grid, and smaller key tiles with a deeper ring.
    "independent": {"schedule": "independent", "persistent": False},
    "pingpong": {"schedule": "pingpong", "persistent": False},
    "independent_persistent": {"schedule": "independent", "persistent": True},
    "pingpong_persistent": {"schedule": "pingpong", "persistent": True},
    "pingpong_persistent_n64_s3": {"block_n": 64, "stages": 3, "schedule": "pingpong", "persistent": True},
}
BASELINE = "triton_baseline"
TIMING_CASES = [(128, 4096, 16), (128, 8192, 16), (128, 16384, 16), (128, 4096, 64), (128, 8192, 64),
                (128, 16384, 64), (64, 4096, 16)]  # (head_dim, seq, page size)
NUM_HEADS, NUM_KV_HEADS, TOKENS = 32, 8, 16384
TOTAL_BUDGET_S = 330.0  # the whole run stays under 6 minutes


def _time_ms(fn, warmup: int = 5, reps: int = 25) -> float:
    """Median of `reps` CUDA-event timings of fn after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _launcher(name: str):
    """(function, config) for a config name: the Gluon kernel or the baseline Triton kernel."""
    if name == BASELINE:
        from kernels.prefill_attention import paged_prefill_attention

        return paged_prefill_attention, None
    from kernels.prefill_gluon import HopperPrefillConfig, paged_prefill_attention_hopper

    return paged_prefill_attention_hopper, HopperPrefillConfig(**CONFIGS[name])


def _ragged_check(fn, config) -> dict:
    """Small ragged batches against the fp32 reference: both modes, both head dims, both page sizes."""
    import torch

    from kernels.prefill_attention import paged_prefill_attention_ref

    results = {}
    # Prefix-cache hits (context longer than the queries), length-1 sequences, lengths that are multiples of no tile.
    contexts, queries = [300, 517, 1, 200, 129, 77, 45], [300, 133, 1, 64, 1, 77, 45]
    for head_dim, block_size, group in ((128, 16, 4), (128, 64, 1), (64, 16, 8)):
        for causal in (True, False):
            g = torch.Generator().manual_seed(head_dim + block_size)
            key_cache, value_cache, tables, lens = _poisoned_cache(contexts, 2, head_dim, block_size, g)
            q = torch.randn(sum(queries), 2 * group, head_dim, generator=g).to(torch.bfloat16).cuda()
            starts = torch.tensor([0, *torch.tensor(queries).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
            out = torch.full_like(q, float("nan"))  # every row must be written
            args = (q, key_cache, value_cache, tables, starts, lens, head_dim**-0.5)
            fn(*args, causal=causal, max_query_len=max(queries), out=out, config=config)
            torch.cuda.synchronize()
            ref = paged_prefill_attention_ref(*args, causal=causal).float()
            err = float("inf") if torch.isnan(out).any() else ((out.float() - ref).norm() / ref.norm()).item()
            results[f"d{head_dim}_bs{block_size}_{'causal' if causal else 'encoder'}"] = err
    return results


def _poisoned_cache(context_lens: list[int], num_kv_heads: int, head_dim: int, block_size: int, g) -> tuple:
    """bf16 caches [blocks, block_size, kv_heads, d] on shuffled pages (two spare), NaN in every slot of a
    sequence's last page past its context; block tables [seqs, max_blocks + 1] and context lengths, on CUDA."""
    import torch

    pages = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(pages) + 2
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=g).to(torch.bfloat16)
    value_cache = torch.randn(shape, generator=g).to(torch.bfloat16)
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.full((len(context_lens), max(pages) + 1), int(order[-1]), dtype=torch.int32)
    used = 0
    for i, (n, length) in enumerate(zip(pages, context_lens)):
        tables[i, :n] = order[used : used + n]
        used += n
        if length % block_size:
            last = int(tables[i, n - 1])
            key_cache[last, length % block_size :] = float("nan")
            value_cache[last, length % block_size :] = float("nan")
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return key_cache.cuda(), value_cache.cuda(), tables.cuda(), lens.cuda()


def _timed_case(fn, config, head_dim: int, seq: int, block_size: int, check: bool) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    from kernels.bench import _paged_copy, _rel_err

    batch = max(1, TOKENS // seq)
    gen = torch.Generator().manual_seed(seq + head_dim)
    q = torch.randn(batch, seq, NUM_HEADS, head_dim, generator=gen).to("cuda", torch.bfloat16)
    k = torch.randn(batch, seq, NUM_KV_HEADS, head_dim, generator=gen).to("cuda", torch.bfloat16)
    v = torch.randn(batch, seq, NUM_KV_HEADS, head_dim, generator=gen).to("cuda", torch.bfloat16)
    key_cache, value_cache, tables = _paged_copy(k, v, gen, block_size)
    starts = torch.arange(0, batch * seq + 1, seq, dtype=torch.int32, device="cuda")
    lens = torch.full((batch,), seq, dtype=torch.int32, device="cuda")
    q_packed = q.reshape(batch * seq, NUM_HEADS, head_dim)
    out = torch.full_like(q_packed, float("nan"))

    def run() -> None:
        fn(q_packed, key_cache, value_cache, tables, starts, lens, head_dim**-0.5, causal=True, max_query_len=seq,
           out=out, config=config)

    run()
    torch.cuda.synchronize()
    row = {"head_dim": head_dim, "seq": seq, "block_size": block_size, "batch": batch}
    if check:
        group = NUM_HEADS // NUM_KV_HEADS
        qs, ks, vs = (t.transpose(1, 2).contiguous() for t in (q, k.repeat_interleave(group, 2),
                                                               v.repeat_interleave(group, 2)))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ref = scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        row["rel_err_vs_flash"] = _rel_err(out.view(batch, seq, NUM_HEADS, head_dim).transpose(1, 2), ref)
        del qs, ks, vs, ref
    ms = _time_ms(run)
    row["ms"] = ms
    row["tflops"] = 4.0 * batch * NUM_HEADS * head_dim * seq * (seq + 1) / 2 / ms / 1e9
    return row


def run_one(name: str) -> dict:
    """Everything for one config, in this process; the result is printed as one JSON line."""
    import torch

    fn, config = _launcher(name)
    result: dict = {"name": name, "config": dataclasses.asdict(config) if config is not None else None}
    t0 = time.perf_counter()
    result["ragged_rel_err"] = _ragged_check(fn, config)
    result["ragged_ok"] = all(e < 1.5e-2 for e in result["ragged_rel_err"].values())
    result["cases"] = []
    for head_dim, seq, block_size in TIMING_CASES:
        check = seq == 4096
        result["cases"].append(_timed_case(fn, config, head_dim, seq, block_size, check))
        torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - t0
    return result


def _child(name: str) -> int:
    try:
        result = run_one(name)
    except Exception as exc:  # reported to the parent, which goes on with the next config
        result = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _print_row(result: dict) -> None:
    name = result["name"]
    if "error" in result:
        print(f"{name:>16}: {result['error'][:300]}", flush=True)
        return
    cells = " ".join(f"d{c['head_dim']}/{c['seq'] // 1024}k/p{c['block_size']} {c['tflops']:6.1f}"
                     for c in result["cases"])
    worst = max(result["ragged_rel_err"].values())
    flash = [c.get("rel_err_vs_flash") for c in result["cases"] if "rel_err_vs_flash" in c]
    print(f"{name:>16}: ragged max rel err {worst:.2e} ({'ok' if result['ragged_ok'] else 'FAIL'}), "
          f"4k vs flash {max(flash):.2e} | TFLOP/s {cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gluon_check.json")
    parser.add_argument("--configs", default=",".join([*CONFIGS, BASELINE]),
                        help=f"comma-separated subset of {[*CONFIGS, BASELINE]} (run in this order)")
    parser.add_argument("--timeout", type=float, default=75.0, help="seconds per config before it is killed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gluon_check.json")
    names = [n for n in args.configs.split(",") if n]
    # The baseline first after the default: the comparison survives even if later configs hang.
    if BASELINE in names and names[0] != BASELINE:
        names.remove(BASELINE)
        names.insert(min(1, len(names)), BASELINE)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "results": []}
    try:
        import torch
        import triton

        report["torch"], report["triton"] = torch.__version__, triton.__version__
        report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        report["env_error"] = repr(exc)
    print(f"gluon_check: {report.get('device')} torch {report.get('torch')} triton {report.get('triton')}", flush=True)
    start = time.perf_counter()
    for name in names:
        left = TOTAL_BUDGET_S - (time.perf_counter() - start)
        if left < 20:
            report["results"].append({"name": name, "error": "skipped: out of time budget"})
            print(f"{name:>16}: skipped (time budget)", flush=True)
            continue
        timeout = min(args.timeout, left)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "kernels.gluon_check", "--out", args.out, "--child", name],
                                  capture_output=True, text=True, timeout=timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                result = json.loads(lines[-1][len("RESULT "):])
            else:
                result = {"name": name, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stderr or b"")[-1000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-1000:]
            result = {"name": name, "error": f"timeout after {timeout:.0f} s (hang?) {tail!s}"}
        result["wall_s"] = time.perf_counter() - t0
        report["results"].append(result)
        _print_row(result)
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    report["total_s"] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path} ({report['total_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
