"""Benchmark of the paged attention kernels on a CUDA GPU, beside torch SDPA and the device copy bandwidth.

    python3 -m kernels.bench --json bench/results/kernels_h100.json --md bench/results/kernels_h100.md
    python3 -m kernels.bench --sweep --json sweep.json      # tile / warp / stage / split variants
    python3 -m kernels.bench --overhead --json overhead.json  # fixed cost per launch: copy and decode over sizes
    python3 -m kernels.bench --replay --json replay.json      # decode replays of 2 to 64 calls: cost per replay

Prefill: causal TFLOP/s (4·B·H·D·S(S+1)/2 flops) on paged K/V (ours) and contiguous K/V (SDPA flash, cuDNN).
Decode: K and V bytes read over time, from CUDA-graph replays that rotate over enough copies of the cache that
nothing is served from L2, the rotation repeated until a replay reads at least REPLAY_BYTES (`--replay` measures
what a replay costs besides its calls).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
from collections.abc import Callable

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from kernels import decode_gluon
from kernels.bench_report import GLUON_ALTERNATIVE_NAMES, compiled_resources, write_markdown
from kernels.decode_attention import (
    DecodeConfig,
    _decode_split_kernel,
    _decode_split_tma_kernel,
    choose_num_splits,
    default_decode_config,
    launch_decode_reduce,
    paged_decode_attention,
)
from kernels.prefill_attention import PrefillConfig, _prefill_kernel, default_prefill_config, paged_prefill_attention
from kernels.prefill_gluon import HopperPrefillConfig, paged_prefill_attention_hopper, supports_hopper_prefill

NUM_HEADS, NUM_KV_HEADS, BLOCK_SIZE = 32, 8, 16
PREFILL_TOKENS = 16384
PREFILL_SEQS = (1024, 2048, 4096, 8192, 16384)
# Gluon prefill schedules timed beside the default one (kernels/prefill_gluon.py).
GLUON_ALTERNATIVES = dict(zip(GLUON_ALTERNATIVE_NAMES, (
    HopperPrefillConfig(schedule="independent", persistent=True),
    HopperPrefillConfig(schedule="pingpong", persistent=True),
    HopperPrefillConfig(schedule="independent", persistent=False),
), strict=True))
PAGE_SIZES = (16, 64)  # the worker's default page, and pages of whole 64-key tiles (TMA decode)
DECODE_SHAPES = ((1, 4096), (16, 4096), (64, 4096), (256, 4096), (8, 32768), (1, 32768))
ROTATE_BYTES = 512 * 2**20  # decode inputs rotate over at least this much memory (L2 is 50 MB)
# A timed replay repeats the rotation until it reads at least this much. Each replay starts cold (the graph's
# launch, and do_bench zeroes a 256 MB buffer before it, whose dirty lines in L2 are written back during the
# first call): about 15 us per replay on the H100, 9% of a call when 16 x 4k ran two calls per replay (`--replay`,
# kernels/NOTES.md v14).
REPLAY_BYTES = 4 * 2**30


def _median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def _back_to_back_ms(fn: Callable[[], object], reps: int = 50) -> float:
    """Mean time of fn over `reps` calls queued back to back between two events, with no cache clearing between
    them (do_bench zeroes a 256 MB buffer before each call it times)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _graph_ms(fns: list[Callable[[], object]], back_to_back: bool = False) -> float:
    """Median time of one call, from replays of a CUDA graph that runs every fn once (no launch gaps between its
    calls); back_to_back: the mean over replays queued one after another instead (_back_to_back_ms)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    return (_back_to_back_ms if back_to_back else _median_ms)(graph.replay) / len(fns)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _paged_copy(k: torch.Tensor, v: torch.Tensor, gen: torch.Generator,
                block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, ...]:
    """Caches [num_blocks, block_size, kv_heads, d] holding k, v ([batch, seq, kv_heads, d]) on shuffled pages."""
    batch, seq, kv_heads, d = k.shape
    pages = seq // block_size
    order = torch.randperm(batch * pages, generator=gen, device="cpu").to(k.device)
    tables = order.view(batch, pages).to(torch.int32)
    key_cache = torch.empty(batch * pages, block_size, kv_heads, d, dtype=k.dtype, device=k.device)
    value_cache = torch.empty_like(key_cache)
    key_cache[order] = k.reshape(batch * pages, block_size, kv_heads, d)
    value_cache[order] = v.reshape(batch * pages, block_size, kv_heads, d)
    return key_cache, value_cache, tables


def bench_prefill(seq: int, head_dim: int, config: PrefillConfig | None, peers: bool, check: bool = True,
                  block_size: int = BLOCK_SIZE, gluon: bool = False) -> dict:
    batch = max(1, PREFILL_TOKENS // seq)
    gen = torch.Generator().manual_seed(seq + head_dim)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch, seq, NUM_HEADS, head_dim, generator=gen).to(dev, dt)
    k = torch.randn(batch, seq, NUM_KV_HEADS, head_dim, generator=gen).to(dev, dt)
    v = torch.randn(batch, seq, NUM_KV_HEADS, head_dim, generator=gen).to(dev, dt)
    key_cache, value_cache, tables = _paged_copy(k, v, gen, block_size)
    starts = torch.arange(0, batch * seq + 1, seq, dtype=torch.int32, device=dev)
    lens = torch.full((batch,), seq, dtype=torch.int32, device=dev)
    q_packed = q.reshape(batch * seq, NUM_HEADS, head_dim)
    out = torch.empty_like(q_packed)
    cfg = config or default_prefill_config(head_dim, block_size)

    def ours() -> None:
        paged_prefill_attention(q_packed, key_cache, value_cache, tables, starts, lens, head_dim**-0.5,
                                causal=True, max_query_len=seq, out=out, config=cfg)

    def hopper(config: HopperPrefillConfig | None = None) -> Callable[[], object]:
        """The Gluon Hopper kernel (kernels/prefill_gluon.py) on the same paged inputs; None: its default config."""
        return lambda: paged_prefill_attention_hopper(q_packed, key_cache, value_cache, tables, starts, lens,
                                                      head_dim**-0.5, causal=True, max_query_len=seq, out=out,
                                                      config=config)

    flops = 4.0 * batch * NUM_HEADS * head_dim * seq * (seq + 1) / 2
    group = NUM_HEADS // NUM_KV_HEADS
    # SDPA gets contiguous [batch, heads, seq, d] inputs with K/V expanded to every query head.
    qs, ks, vs = (t.transpose(1, 2).contiguous() for t in (q, k.repeat_interleave(group, 2),
                                                           v.repeat_interleave(group, 2)))
    row = {"batch": batch, "seq": seq, "head_dim": head_dim, "block_size": block_size, "config": cfg.__dict__}
    kernels = [("ours", "", ours)]
    if gluon and supports_hopper_prefill(q_packed, key_cache, value_cache):
        kernels.append(("gluon", "gluon_", hopper()))
        # The other Gluon schedules, timed in the same run as the default (an A/B, kernels/NOTES.md v7).
        kernels += [(f"gluon_{name}", f"gluon_{name}_", hopper(cfg)) for name, cfg in GLUON_ALTERNATIVES.items()]
    for name, prefix, fn in kernels:
        out.fill_(float("nan"))  # poisoned: the error check sees unwritten rows
        fn()
        torch.cuda.synchronize()
        if check:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ref = scaled_dot_product_attention(qs, ks, vs, is_causal=True)
            row[f"{prefix}rel_err_vs_flash"] = _rel_err(out.view(batch, seq, NUM_HEADS, head_dim).transpose(1, 2), ref)
            del ref
        row[f"{name}_tflops"] = flops / _median_ms(fn) / 1e9
    if not peers:
        return row
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                ref = scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                row[f"{name}_tflops"] = flops / _median_ms(
                    lambda: scaled_dot_product_attention(qs, ks, vs, is_causal=True)) / 1e9
            row[f"rel_err_vs_{name}"] = _rel_err(out.view(batch, seq, NUM_HEADS, head_dim).transpose(1, 2), ref)
        except RuntimeError as exc:  # a backend that refuses these shapes is reported, not fatal
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
    peers_seen = [row[key] for key in ("sdpa_flash_tflops", "sdpa_cudnn_tflops") if key in row]
    if peers_seen:
        row["ratio_to_best_peer"] = row["ours_tflops"] / max(peers_seen)
    return row


def _decode_launch_choice(batch: int, context: int, block_size: int, num_splits: int | None = None,
                          config: DecodeConfig | None = None) -> tuple[int, DecodeConfig]:
    """The splits and config paged_decode_attention picks for this shape where they are not given."""
    cuda = torch.device("cuda")
    if num_splits is None:
        split_cfg = config or default_decode_config(batch, NUM_KV_HEADS, 0, block_size, cuda)
        num_splits = choose_num_splits(batch, NUM_KV_HEADS, context, split_cfg)
    return num_splits, config or default_decode_config(batch, NUM_KV_HEADS, num_splits, block_size, cuda)


def bench_decode(batch: int, context: int, num_splits: int | None, config: DecodeConfig | None,
                 peers: bool, head_dim: int = 128, block_size: int = BLOCK_SIZE,
                 replay_bytes: int = REPLAY_BYTES, back_to_back: bool = False) -> dict:
    gen = torch.Generator().manual_seed(batch * 7 + context)
    dev, dt = "cuda", torch.bfloat16
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * head_dim * 2
    copies = max(1, min(32, math.ceil(ROTATE_BYTES / kv_bytes)))
    repeat = max(1, math.ceil(replay_bytes / (copies * kv_bytes)))  # rotations per timed replay
    lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    inputs = []
    for _ in range(copies):
        k = torch.randn(batch, context, NUM_KV_HEADS, head_dim, device=dev, dtype=dt)
        v = torch.randn(batch, context, NUM_KV_HEADS, head_dim, device=dev, dtype=dt)
        q = torch.randn(batch, NUM_HEADS, head_dim, device=dev, dtype=dt)
        inputs.append((q, k, v, *_paged_copy(k, v, gen, block_size), torch.empty_like(q)))
    num_splits, cfg = _decode_launch_choice(batch, context, block_size, num_splits, config)

    def ours(item, launch_cfg: DecodeConfig = cfg) -> Callable[[], object]:
        q, _, _, key_cache, value_cache, tables, out = item
        return lambda: paged_decode_attention(q, key_cache, value_cache, tables, lens, head_dim**-0.5,
                                              max_context_len=context, num_splits=num_splits, out=out,
                                              config=launch_cfg)

    row = {"batch": batch, "context": context, "block_size": block_size, "num_splits": num_splits, "config": cfg.__dict__,
           "kv_bytes": kv_bytes, "rotated_copies": copies, "calls_per_replay": copies * repeat,
           "timing": "back_to_back" if back_to_back else "do_bench"}
    row["ours_tbps"] = kv_bytes / _graph_ms([ours(item) for item in inputs] * repeat, back_to_back) / 1e9
    if cfg.pdl:
        # The same kernel launched the ordinary way: no call starts before the previous one has ended.
        ordinary = dataclasses.replace(cfg, pdl=False)
        ordinary_calls = [ours(item, ordinary) for item in inputs] * repeat
        row["ours_ordinary_launch_tbps"] = kv_bytes / _graph_ms(ordinary_calls, back_to_back) / 1e9
    # SDPA on contiguous [batch, kv_heads, context, d] K/V with GQA (q: [batch, heads, 1, d]).
    dense = [(q[:, :, None], k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
             for q, k, v, *_ in (inputs if peers else inputs[:1])]
    inputs[0][-1].fill_(float("nan"))  # poisoned: the error check sees unwritten rows
    ours(inputs[0])()
    ref = scaled_dot_product_attention(*dense[0], enable_gqa=True)[:, :, 0]
    row["rel_err_vs_sdpa"] = _rel_err(inputs[0][-1], ref)
    if num_splits > 1:
        # The merge kernel alone, on partial results of the same shape: what merging in the split kernel could save.
        part_out = torch.randn(batch, NUM_HEADS, num_splits, head_dim, device=dev)
        part_lse = torch.randn(batch, NUM_HEADS, num_splits, device=dev)
        split_len = triton.cdiv(triton.cdiv(context, num_splits), cfg.block_n) * cfg.block_n
        row["reduce_us"] = 1e3 * _graph_ms([lambda: launch_decode_reduce(part_out, part_lse, lens, inputs[0][-1],
                                                                        split_len, cfg.pdl_merge)] * 8)
    if not peers:
        return row
    sdpa_calls = [lambda a=a: scaled_dot_product_attention(*a, enable_gqa=True) for a in dense]
    try:
        sdpa_ms = _graph_ms(sdpa_calls * repeat, back_to_back)
    except RuntimeError as exc:  # a backend that cannot be captured is timed with launches instead
        row["sdpa_graph_error"] = str(exc).splitlines()[0][:200]
        sdpa_ms = _median_ms(lambda: [call() for call in sdpa_calls]) / len(sdpa_calls)
    row["sdpa_tbps"] = kv_bytes / sdpa_ms / 1e9
    row["ratio_to_sdpa"] = row["ours_tbps"] / row["sdpa_tbps"]
    return row


def _copy_peers(row: dict, peer_row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in peer_row and key not in row:
            row[key] = peer_row[key]


def copy_bandwidth_tbps(calls: int = 4) -> float:
    """Bytes read and written by `calls` copies of 1 GiB queued back to back, over their time (do_bench's cache
    clearing before each timed region costs about as much as a 16 x 4k decode replay's, kernels/NOTES.md v14)."""
    src = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return calls * 2 * src.numel() * 2 / _median_ms(lambda: [dst.copy_(src) for _ in range(calls)]) / 1e9


# Third sweep (kernels/NOTES.md, v3): (head_dim, block_m, block_n, num_warps, num_stages, page_loads, split_rows);
# page_loads 0 = gathered vector, 1 = scalars, 2 = inline assembly.
PREFILL_VARIANTS = [
    (128, 128, 64, 4, 3, 0, False), (128, 128, 64, 4, 3, 0, True), (128, 128, 64, 4, 2, 2, False),
    (128, 128, 64, 4, 2, 2, True), (128, 128, 32, 4, 3, 2, False), (128, 64, 64, 4, 2, 2, False),
    (128, 64, 32, 4, 3, 2, False), (128, 128, 128, 8, 3, 2, False), (128, 128, 64, 4, 3, 1, False),
    (64, 128, 64, 8, 3, 2, False), (64, 128, 64, 4, 2, 2, False), (64, 64, 64, 4, 3, 2, False),
    (64, 128, 64, 8, 2, 2, False),
]
# (batch, context, splits, block_n, num_warps, num_stages, page_loads, pdl_merge)
DECODE_RUNS = [
    (16, 4096, 4, 64, 4, 2, 2, True), (16, 4096, 4, 64, 4, 2, 2, False), (16, 4096, 2, 64, 4, 3, 2, True),
    (16, 4096, 1, 64, 4, 3, 2, True), (16, 4096, 1, 64, 4, 4, 2, True), (16, 4096, 1, 64, 4, 5, 2, True),
    (16, 4096, 1, 128, 4, 3, 2, True), (16, 4096, 1, 64, 8, 4, 2, True),
    (1, 32768, 66, 64, 4, 2, 2, True), (1, 32768, 66, 64, 4, 2, 2, False), (1, 32768, 33, 64, 4, 3, 2, True),
    (1, 32768, 66, 64, 4, 3, 0, True), (8, 32768, 8, 64, 4, 2, 2, True), (64, 4096, 1, 64, 4, 2, 2, True),
]


# Fourth sweep (TMA tiles; warp-specialised loops are probed by kernels/ws_probe.py):
# (head_dim, block_size, block_m, block_n, warps, stages, tma).
TMA_PREFILL_VARIANTS = [
    (128, 16, 128, 64, 4, 3, False),  # the gather kernel's default, for the same-run baseline
    (128, 64, 128, 64, 4, 3, False),  # the gather kernel on 64-key pages
    (128, 64, 128, 64, 8, 3, True), (128, 64, 128, 64, 4, 3, True), (64, 16, 128, 64, 8, 3, False),
]
# (batch, context, block_size, splits, block_n, warps, stages, tma)
TMA_DECODE_RUNS = [
    (16, 4096, 16, 1, 128, 4, 3, False), (16, 4096, 64, 1, 128, 4, 3, False), (16, 4096, 64, 1, 64, 4, 4, True),
    (16, 4096, 64, 1, 64, 4, 6, True), (16, 4096, 128, 1, 128, 4, 3, True), (16, 4096, 128, 1, 128, 4, 4, True),
    (16, 4096, 64, 2, 64, 4, 4, True),
    (1, 32768, 16, 66, 64, 4, 2, False), (1, 32768, 64, 66, 64, 4, 2, False), (1, 32768, 64, 66, 64, 4, 3, True),
    (1, 32768, 64, 33, 64, 4, 4, True), (1, 32768, 64, 16, 64, 4, 6, True), (1, 32768, 128, 33, 128, 4, 3, True),
    (64, 4096, 64, 1, 64, 4, 3, True), (64, 4096, 64, 1, 64, 4, 2, False),
]


def tma_sweep() -> dict:
    result: dict = {"prefill": [], "decode": []}
    for head_dim, bs, m, n, w, st, tma in TMA_PREFILL_VARIANTS:
        cfg = PrefillConfig(block_m=m, block_n=n, num_warps=w, num_stages=st, page_loads=0 if head_dim == 128 else 2,
                            split_rows=not tma and head_dim == 128 and w == 4, tma=tma)
        for seq in (4096, 16384) if head_dim == 128 else (4096,):
            result["prefill"].append(_sweep_row(
                "prefill", lambda: bench_prefill(seq, head_dim, cfg, peers=False, block_size=bs),
                {"config": cfg.__dict__, "block_size": bs, "seq": seq}))
    for batch, context, bs, splits, n, w, st, tma in TMA_DECODE_RUNS:
        cfg = DecodeConfig(block_n=n, num_warps=w, num_stages=st, tma=tma)
        result["decode"].append(_sweep_row(
            "decode", lambda: bench_decode(batch, context, splits, cfg, peers=False, block_size=bs),
            {"config": cfg.__dict__, "block_size": bs, "batch": batch, "context": context}))
    return result


def _sweep_row(kind: str, fn: Callable[[], dict], fallback: dict) -> dict:
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result too
        row = {**fallback, "error": repr(exc)[:300]}
    print(kind, row, flush=True)
    return row


def sweep() -> dict:
    result: dict = {"prefill": [], "decode": []}
    for head_dim, m, n, w, st, pl, halves in PREFILL_VARIANTS:
        cfg = PrefillConfig(block_m=m, block_n=n, num_warps=w, num_stages=st, page_loads=pl, split_rows=halves)
        result["prefill"].append(_sweep_row(
            "prefill", lambda: bench_prefill(4096, head_dim, cfg, peers=False), {"config": cfg.__dict__}))
    for batch, context, splits, n, w, st, pl, pdl in DECODE_RUNS:
        cfg = DecodeConfig(block_n=n, num_warps=w, num_stages=st, page_loads=pl, pdl_merge=pdl)
        result["decode"].append(_sweep_row(
            "decode", lambda: bench_decode(batch, context, splits, cfg, peers=False), {"config": cfg.__dict__}))
    result["resources"] = compiled_resources(_prefill_kernel) + compiled_resources(_decode_split_kernel)
    return result


def summary(report: dict) -> str:
    """One line per row: the figures the sweep is read by."""
    lines = []
    for r in report.get("prefill", []):
        c = r.get("config", {})
        lines.append(f"prefill d{r.get('head_dim')} S{r.get('seq')} bs{r.get('block_size')} tma{int(bool(c.get('tma')))} "
                     f"{c.get('block_m')}x{c.get('block_n')} w{c.get('num_warps')} "
                     f"s{c.get('num_stages')} p{c.get('page_loads')} h{int(bool(c.get('split_rows')))}: {r.get('ours_tflops', float('nan')):.0f} "
                     f"TFLOP/s err {r.get('rel_err_vs_flash', float('nan')):.1e} {r.get('error', '')[:60]}")
    for r in report.get("decode", []):
        c = r.get("config", {})
        lines.append(f"decode {r.get('batch')}x{r.get('context')} bs{r.get('block_size')} tma{int(bool(c.get('tma')))} "
                     f"gluon{int(bool(c.get('gluon')))} "
                     f"sp{r.get('num_splits')} n{c.get('block_n')} "
                     f"w{c.get('num_warps')} s{c.get('num_stages')} p{c.get('page_loads')} pdl{int(bool(c.get('pdl_merge')))}: "
                     f"{r.get('ours_tbps', float('nan')):.2f} TB/s err {r.get('rel_err_vs_sdpa', float('nan')):.1e} "
                     f"reduce {r.get('reduce_us', 0):.1f} us {r.get('error', '')[:60]}")
    for r in report.get("resources", []):
        keys = ("BLOCK_M", "BLOCK_N", "PAGE_LOADS", "SPLIT_ROWS", "HEAD_DIM")
        lines.append(f"{r['kernel']} w{r['num_warps']} s{r['num_stages']} regs {r['registers']} spills "
                     f"{r['spills']} smem {r['shared_bytes']} "
                     + " ".join(f"{k}={r['constants'].get(k)}" for k in keys if k in (r.get("constants") or {})))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    parser.add_argument("--md", help="where to write the markdown table")
    parser.add_argument("--sweep", action="store_true", help="time tile/warp/stage/split variants instead")
    parser.add_argument("--tma-sweep", action="store_true", help="time the TMA / warp-specialised variants instead")
    parser.add_argument("--overhead", action="store_true", help="time copy and decode over sizes: fixed launch cost")
    parser.add_argument("--pdl-ab", action="store_true", help="split decode with and without a dependent-launch merge")
    parser.add_argument("--replay", action="store_true", help="decode in replays of more and more calls: replay cost")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    meta = {
        "device": torch.cuda.get_device_name(), "num_sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
        "command": "python3 -m kernels.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "dtype": "bfloat16", "num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS, "block_sizes": list(PAGE_SIZES),
    }
    if args.pdl_ab or args.replay or args.overhead:
        from kernels import bench_series  # imports this module

        series = bench_series.pdl_ab if args.pdl_ab else (
            bench_series.replay_series if args.replay else bench_series.overhead_series)
        report = {"meta": meta, **series()}
        if "fits" in report:
            print(json.dumps(report["fits"], indent=1))
    elif args.tma_sweep:
        report = {"meta": meta, "copy_tbps": copy_bandwidth_tbps(), **tma_sweep()}
    elif args.sweep:
        report = {"meta": meta, **sweep()}
    else:
        report = {"meta": meta, "copy_tbps": copy_bandwidth_tbps(), "copy_one_call_tbps": copy_bandwidth_tbps(1),
                  "prefill": [], "decode": []}
        # Peers run on contiguous K/V, so they are timed once per shape (with the first page size).
        for head_dim in (128, 64):
            for seq in PREFILL_SEQS:
                peer_row: dict = {}
                for block_size in PAGE_SIZES:
                    row = bench_prefill(seq, head_dim, None, peers=not peer_row, block_size=block_size, gluon=True)
                    peer_row = peer_row or row
                    _copy_peers(row, peer_row, ("sdpa_flash_tflops", "sdpa_cudnn_tflops", "rel_err_vs_sdpa_cudnn"))
                    peers_seen = [row[k] for k in ("sdpa_flash_tflops", "sdpa_cudnn_tflops") if k in row]
                    if peers_seen:
                        row["ratio_to_best_peer"] = row["ours_tflops"] / max(peers_seen)
                    print("prefill", row, flush=True)
                    report["prefill"].append(row)
        for batch, context in DECODE_SHAPES:
            peer_row = {}
            for block_size in PAGE_SIZES:
                row = _sweep_row(
                    "decode", lambda: bench_decode(batch, context, None, None, peers=not peer_row, block_size=block_size),
                    {"batch": batch, "context": context, "block_size": block_size})
                peer_row = peer_row or row
                _copy_peers(row, peer_row, ("sdpa_tbps",))
                if "ours_tbps" in row:
                    row["ratio_to_copy"] = row["ours_tbps"] / report["copy_tbps"]
                    if "sdpa_tbps" in row:
                        row["ratio_to_sdpa"] = row["ours_tbps"] / row["sdpa_tbps"]
                report["decode"].append(row)
        report["resources"] = (compiled_resources(_prefill_kernel) + compiled_resources(_decode_split_kernel)
                               + compiled_resources(_decode_split_tma_kernel)
                               + compiled_resources(getattr(decode_gluon, "_decode_hopper_kernel", None)))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    if args.md and not (args.sweep or args.tma_sweep or args.overhead or args.pdl_ab or args.replay):
        write_markdown(report, args.md)
    print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
