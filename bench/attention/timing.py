"""Inputs and timers of the attention benchmarks: paged caches on shuffled pages, CUDA-graph replays over rotating
copies of the inputs, and one timed row per prefill or decode shape.

Prefill: causal TFLOP/s (4·B·H·D·S(S+1)/2 flops) on paged K/V (ours) and contiguous K/V (SDPA flash, cuDNN).
Decode: K and V bytes read over time, from CUDA-graph replays that rotate over enough copies of the cache that
nothing is served from L2, the rotation repeated until a replay reads at least REPLAY_BYTES.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import sys
from collections.abc import Callable

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from bench.attention.report import GLUON_ALTERNATIVE_NAMES
from kernels.decode_attention import (
    DecodeConfig,
    choose_num_splits,
    default_decode_config,
    launch_decode_reduce,
    paged_decode_attention,
)
from kernels.prefill_attention import PrefillConfig, default_prefill_config, paged_prefill_attention
from kernels.prefill_gluon import HopperPrefillConfig, paged_prefill_attention_hopper, supports_hopper_prefill

NUM_HEADS, NUM_KV_HEADS, BLOCK_SIZE = 32, 8, 16
PREFILL_TOKENS = 16384
# The Gluon prefill schedules, each timed beside the default one in the same run (report.py names the columns).
GLUON_ALTERNATIVES = dict(zip(GLUON_ALTERNATIVE_NAMES, (
    HopperPrefillConfig(schedule="independent"),
    HopperPrefillConfig(schedule="pingpong"),
), strict=True))
PAGE_SIZES = (16, 64)  # the worker's default page, and pages of whole 64-key tiles (`--block-size 64`)
ROTATE_BYTES = 512 * 2**20  # decode inputs rotate over at least this much memory (L2 is 50 MB)
# A timed replay repeats the rotation until it reads at least this much: each replay starts cold (the graph's
# launch, and do_bench zeroes a 256 MB buffer before it, whose dirty lines in L2 are written back during the first
# call), and that cost must be small next to the calls (fixed_costs.py --replay measures it).
REPLAY_BYTES = 4 * 2**30


def run_meta(command: str) -> dict:
    """Device, date and versions of a run, and the command that made it."""
    return {
        "device": torch.cuda.get_device_name(), "num_sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
        "command": command, "dtype": "bfloat16", "num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS,
        "block_sizes": list(PAGE_SIZES),
    }


def require_cuda(name: str) -> bool:
    """False, with a message, where no CUDA GPU is present."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        return True
    print(f"{name} needs a CUDA GPU", file=sys.stderr)
    return False


def median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def back_to_back_ms(fn: Callable[[], object], reps: int = 50) -> float:
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


def graph_ms(fns: list[Callable[[], object]], back_to_back: bool = False) -> float:
    """Median time of one call, from replays of a CUDA graph that runs every fn once (no launch gaps between its
    calls); back_to_back: the mean over replays queued one after another instead (back_to_back_ms)."""
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
    return (back_to_back_ms if back_to_back else median_ms)(graph.replay) / len(fns)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def paged_copy(k: torch.Tensor, v: torch.Tensor, gen: torch.Generator,
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
    key_cache, value_cache, tables = paged_copy(k, v, gen, block_size)
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
        kernels += [(f"gluon_{name}", f"gluon_{name}_", hopper(alt)) for name, alt in GLUON_ALTERNATIVES.items()]
    for name, prefix, fn in kernels:
        out.fill_(float("nan"))  # poisoned: the error check sees unwritten rows
        fn()
        torch.cuda.synchronize()
        if check:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ref = scaled_dot_product_attention(qs, ks, vs, is_causal=True)
            row[f"{prefix}rel_err_vs_flash"] = rel_err(out.view(batch, seq, NUM_HEADS, head_dim).transpose(1, 2), ref)
            del ref
        row[f"{name}_tflops"] = flops / median_ms(fn) / 1e9
    if not peers:
        return row
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                ref = scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                row[f"{name}_tflops"] = flops / median_ms(
                    lambda: scaled_dot_product_attention(qs, ks, vs, is_causal=True)) / 1e9
            row[f"rel_err_vs_{name}"] = rel_err(out.view(batch, seq, NUM_HEADS, head_dim).transpose(1, 2), ref)
        except RuntimeError as exc:  # a backend that refuses these shapes is reported, not fatal
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
    peers_seen = [row[key] for key in ("sdpa_flash_tflops", "sdpa_cudnn_tflops") if key in row]
    if peers_seen:
        row["ratio_to_best_peer"] = row["ours_tflops"] / max(peers_seen)
    return row


def decode_launch_choice(batch: int, context: int, block_size: int, num_splits: int | None = None,
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
        inputs.append((q, k, v, *paged_copy(k, v, gen, block_size), torch.empty_like(q)))
    num_splits, cfg = decode_launch_choice(batch, context, block_size, num_splits, config)

    def ours(item, launch_cfg: DecodeConfig = cfg) -> Callable[[], object]:
        q, _, _, key_cache, value_cache, tables, out = item
        return lambda: paged_decode_attention(q, key_cache, value_cache, tables, lens, head_dim**-0.5,
                                              max_context_len=context, num_splits=num_splits, out=out,
                                              config=launch_cfg)

    row = {"batch": batch, "context": context, "block_size": block_size, "num_splits": num_splits, "config": cfg.__dict__,
           "kv_bytes": kv_bytes, "rotated_copies": copies, "calls_per_replay": copies * repeat,
           "timing": "back_to_back" if back_to_back else "do_bench"}
    row["ours_tbps"] = kv_bytes / graph_ms([ours(item) for item in inputs] * repeat, back_to_back) / 1e9
    if cfg.pdl:
        # The same kernel launched the ordinary way: no call starts before the previous one has ended.
        ordinary = dataclasses.replace(cfg, pdl=False)
        ordinary_calls = [ours(item, ordinary) for item in inputs] * repeat
        row["ours_ordinary_launch_tbps"] = kv_bytes / graph_ms(ordinary_calls, back_to_back) / 1e9
    # SDPA on contiguous [batch, kv_heads, context, d] K/V with GQA (q: [batch, heads, 1, d]).
    dense = [(q[:, :, None], k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
             for q, k, v, *_ in (inputs if peers else inputs[:1])]
    inputs[0][-1].fill_(float("nan"))  # poisoned: the error check sees unwritten rows
    ours(inputs[0])()
    ref = scaled_dot_product_attention(*dense[0], enable_gqa=True)[:, :, 0]
    row["rel_err_vs_sdpa"] = rel_err(inputs[0][-1], ref)
    if num_splits > 1:
        # The merge kernel alone, on partial results of the same shape: what a split costs besides its reads.
        part_out = torch.randn(batch, NUM_HEADS, num_splits, head_dim, device=dev)
        part_lse = torch.randn(batch, NUM_HEADS, num_splits, device=dev)
        split_len = triton.cdiv(triton.cdiv(context, num_splits), cfg.block_n) * cfg.block_n
        row["reduce_us"] = 1e3 * graph_ms([lambda: launch_decode_reduce(part_out, part_lse, lens, inputs[0][-1],
                                                                       split_len)] * 8)
    if not peers:
        return row
    sdpa_calls = [lambda a=a: scaled_dot_product_attention(*a, enable_gqa=True) for a in dense]
    try:
        sdpa_ms = graph_ms(sdpa_calls * repeat, back_to_back)
    except RuntimeError as exc:  # a backend that cannot be captured is timed with launches instead
        row["sdpa_graph_error"] = str(exc).splitlines()[0][:200]
        sdpa_ms = median_ms(lambda: [call() for call in sdpa_calls]) / len(sdpa_calls)
    row["sdpa_tbps"] = kv_bytes / sdpa_ms / 1e9
    row["ratio_to_sdpa"] = row["ours_tbps"] / row["sdpa_tbps"]
    return row


def copy_bandwidth_tbps(calls: int = 4) -> float:
    """Bytes read and written by `calls` copies of 1 GiB queued back to back, over their time (do_bench's cache
    clearing before each timed region must stay small next to what it times)."""
    src = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return calls * 2 * src.numel() * 2 / median_ms(lambda: [dst.copy_(src) for _ in range(calls)]) / 1e9
