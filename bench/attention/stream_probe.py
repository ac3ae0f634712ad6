"""Probe of how fast one launch can stream a decode-sized buffer, and how evenly the SMs share the bandwidth.

    python3 -m bench.attention.stream_probe --json FILE [--stages-sweep | --layout-sweep]

A read-only kernel (each [128, 128] bf16 tile copied by TMA, summed by columns) streams 268 MB or 134 MB (the K/V
bytes of decode at 16 x 4k and 1 x 32k). Default rows: a static grid of 128 programs (one per (sequence, kv head)
pair at 16 x 4k), over contiguous rows or over the paged cache's interleaved kv heads; 264 programs at two per SM;
1024-4096 short programs that the block scheduler hands to whichever SM is free; and a persistent grid whose
programs take 512 KB chunks from an atomic counter. --stages-sweep: 128 programs at ring depths 2-6. --layout-sweep:
128 programs over one buffer or over two (decode's K and V, a tile of each per step) in 128- or 64-row tiles. Each
program records its SM, start and end (global timer, ns): the spread of the end times, and their correlation
between two launches, show whether the same SMs finish last every time. Times are CUDA-graph replays over rotating
buffers, as in the attention benchmark (timing.py). What it found: bench/EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from bench.attention.timing import graph_ms, require_cuda

TILE_ROWS, TILE_COLS = 128, 128  # one 32 KB bf16 tile per copy
ROTATE_BYTES = 1024 * 2**20


@triton.jit
def _global_ns():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _sm_id():
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _record_program(timeline_ptr, pid, start, tiles):
    """Row pid of the [programs, 4] timeline: SM, start, end (global timer, ns) and tiles read."""
    tl.store(timeline_ptr + pid * 4 + 0, _sm_id().to(tl.int64))
    tl.store(timeline_ptr + pid * 4 + 1, start)
    tl.store(timeline_ptr + pid * 4 + 2, _global_ns())
    tl.store(timeline_ptr + pid * 4 + 3, tiles.to(tl.int64))


@triton.jit
def _sum_rows_at(desc, first_tile, num_tiles, col, acc, TILE_R: tl.constexpr, STAGES: tl.constexpr):
    for t in tl.range(first_tile, first_tile + num_tiles, num_stages=STAGES):
        acc += tl.sum(desc.load([t * TILE_R, col]).to(tl.float32), axis=0)
    return acc


@triton.jit
def _static_kernel(desc, out_ptr, timeline_ptr, tiles_per_prog, num_tiles, heads,
                   TILE_R: tl.constexpr, TILE_C: tl.constexpr, STAGES: tl.constexpr):
    # With heads > 1 the buffer is [rows, heads * TILE_C] (the cache's [slots, kv heads * head dim]) and program
    # p reads head p % heads of row range p // heads: 256-byte rows at a stride of heads * 256 bytes, as decode does.
    pid = tl.program_id(0)
    start = _global_ns()
    first = (pid // heads) * tiles_per_prog
    acc = tl.zeros([TILE_C], tl.float32)
    acc = _sum_rows_at(desc, first, tl.minimum(tiles_per_prog, num_tiles - first), (pid % heads) * TILE_C, acc,
                       TILE_R, STAGES)
    tl.store(out_ptr + pid * TILE_C + tl.arange(0, TILE_C), acc)
    _record_program(timeline_ptr, pid, start, tiles_per_prog)


@triton.jit
def _static_kv_kernel(k_desc, v_desc, out_ptr, timeline_ptr, tiles_per_prog, num_tiles, heads,
                      TILE_R: tl.constexpr, TILE_C: tl.constexpr, STAGES: tl.constexpr):
    # Decode's two streams: program p reads head p % heads of row range p // heads from K and from V, a tile of
    # each per step (both buffers [rows, heads * TILE_C]).
    pid = tl.program_id(0)
    start = _global_ns()
    first = (pid // heads) * tiles_per_prog
    col = (pid % heads) * TILE_C
    acc = tl.zeros([TILE_C], tl.float32)
    for t in tl.range(first, first + tl.minimum(tiles_per_prog, num_tiles - first), num_stages=STAGES):
        acc += tl.sum(k_desc.load([t * TILE_R, col]).to(tl.float32), axis=0)
        acc += tl.sum(v_desc.load([t * TILE_R, col]).to(tl.float32), axis=0)
    tl.store(out_ptr + pid * TILE_C + tl.arange(0, TILE_C), acc)
    _record_program(timeline_ptr, pid, start, 2 * tiles_per_prog)


@triton.jit
def _dynamic_kernel(desc, counter_ptr, out_ptr, timeline_ptr, tiles_per_chunk, num_chunks,
                    TILE_R: tl.constexpr, TILE_C: tl.constexpr, STAGES: tl.constexpr):
    # counter_ptr[0]: next chunk to take; counter_ptr[1]: programs that found none left. The last program to find
    # none resets both, so a CUDA graph can replay the launch.
    pid = tl.program_id(0)
    start = _global_ns()
    acc = tl.zeros([TILE_C], tl.float32)
    taken = 0
    chunk = tl.atomic_add(counter_ptr, 1)
    while chunk < num_chunks:
        nxt = tl.atomic_add(counter_ptr, 1)  # in flight while this chunk streams
        acc = _sum_rows_at(desc, chunk * tiles_per_chunk, tiles_per_chunk, 0, acc, TILE_R, STAGES)
        taken += 1
        chunk = nxt
    tl.store(out_ptr + pid * TILE_C + tl.arange(0, TILE_C), acc)
    if tl.atomic_add(counter_ptr + 1, 1) == tl.num_programs(0) - 1:
        tl.atomic_xchg(counter_ptr, 0)
        tl.atomic_xchg(counter_ptr + 1, 0)
    _record_program(timeline_ptr, pid, start, taken * tiles_per_chunk)


def _timeline_summary(timeline: torch.Tensor, tile_bytes: int) -> dict:
    """End-time spread of one launch: per program (sm, start, end, tiles) -> percentiles and the busiest SMs."""
    rows = timeline.cpu().tolist()
    t0 = min(r[1] for r in rows)
    ends = sorted((r[2] - t0) / 1e3 for r in rows)
    starts = sorted((r[1] - t0) / 1e3 for r in rows)
    per_sm: dict[int, int] = {}
    for sm, _, _, tiles in rows:
        per_sm[sm] = per_sm.get(sm, 0) + tiles
    loads = sorted(per_sm.values())
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {
        "start_us_p0_p50_p100": [starts[0], pick(starts, 0.5), starts[-1]],
        "end_us_p0_p10_p50_p90_p100": [ends[0], pick(ends, 0.1), pick(ends, 0.5), pick(ends, 0.9), ends[-1]],
        "sms_used": len(per_sm),
        "mb_per_sm_min_median_max": [loads[0] * tile_bytes / 1e6, pick(loads, 0.5) * tile_bytes / 1e6,
                                     loads[-1] * tile_bytes / 1e6],
    }


def _end_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation over SMs of the last end time in two launches (1: the same SMs finish last every time)."""
    def last_end(t: torch.Tensor) -> dict[int, float]:
        rows, ends = t.cpu().tolist(), {}
        t0 = min(r[1] for r in rows)
        for sm, _, end, _ in rows:
            ends[sm] = max(ends.get(sm, 0.0), (end - t0) / 1e3)
        return ends
    ea, eb = last_end(a), last_end(b)
    sms = sorted(set(ea) & set(eb))
    x = torch.tensor([ea[s] for s in sms], dtype=torch.float64)
    y = torch.tensor([eb[s] for s in sms], dtype=torch.float64)
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def probe(total_bytes: int, mode: str, grid: int, chunk_bytes: int = 0, stages: int = 4, heads: int = 1,
          tile_rows: int = TILE_ROWS) -> dict:
    """mode: static, kv (static over two buffers of half the bytes each, as decode's K and V) or dynamic."""
    tile_bytes = tile_rows * TILE_COLS * 2
    streams = 2 if mode == "kv" else 1
    num_tiles = total_bytes // tile_bytes // heads // streams  # row tiles of each [rows, heads * TILE_COLS] buffer
    copies = max(1, math.ceil(ROTATE_BYTES / total_bytes))
    bufs = [[torch.randn(num_tiles * tile_rows, heads * TILE_COLS, device="cuda", dtype=torch.bfloat16)
             for _ in range(streams)] for _ in range(copies)]
    descs = [[TensorDescriptor(b, list(b.shape), [heads * TILE_COLS, 1], [tile_rows, TILE_COLS]) for b in pair]
             for pair in bufs]
    out = torch.empty(grid, TILE_COLS, device="cuda", dtype=torch.float32)
    timeline = torch.zeros(grid, 4, device="cuda", dtype=torch.int64)
    counter = torch.zeros(2, device="cuda", dtype=torch.int32)
    meta = dict(TILE_R=tile_rows, TILE_C=TILE_COLS, STAGES=stages, num_warps=4)
    if mode == "kv":
        per_prog = triton.cdiv(num_tiles, grid // heads)
        calls = [lambda d=d: _static_kv_kernel[(grid,)](d[0], d[1], out, timeline, per_prog, num_tiles, heads, **meta)
                 for d in descs]
    elif mode == "static":
        per_prog = triton.cdiv(num_tiles, grid // heads)
        calls = [lambda d=d: _static_kernel[(grid,)](d[0], out, timeline, per_prog, num_tiles, heads, **meta)
                 for d in descs]
    else:
        per_chunk = chunk_bytes // tile_bytes
        chunks = num_tiles // per_chunk
        calls = [lambda d=d: _dynamic_kernel[(grid,)](d[0], counter, out, timeline, per_chunk, chunks, **meta)
                 for d in descs]
    calls[0]()
    torch.cuda.synchronize()
    expected = sum(b.float().view(-1, heads, TILE_COLS).sum(dim=(0, 1)) for b in bufs[0])
    rel_err = ((out.sum(0) - expected).norm() / expected.norm()).item()
    us = 1e3 * graph_ms(calls)
    calls[0]()  # two more launches for the timeline: does a slow SM stay slow?
    first_timeline = timeline.clone()
    calls[0]()
    torch.cuda.synchronize()
    row = {"mb": total_bytes / 1e6, "mode": mode, "grid": grid, "heads": heads, "tile_rows": tile_rows,
           "chunk_kb": chunk_bytes // 1024,
           "stages": stages, "us": us, "tbps": total_bytes / us / 1e6, "rel_err": rel_err,
           "counter_after": counter.tolist(), **_timeline_summary(timeline, tile_bytes),
           "end_corr_between_launches": _end_correlation(first_timeline, timeline)}
    if grid <= 2 * 132:
        row["timeline_sm_start_end_tiles"] = timeline.cpu().tolist()
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--stages-sweep", action="store_true",
                        help="128 programs over the interleaved-head layout at 2-6 pipeline stages")
    parser.add_argument("--layout-sweep", action="store_true",
                        help="128 programs, interleaved heads: 128- and 64-row tiles, one buffer or K and V")
    args = parser.parse_args(argv)
    if not require_cuda("bench.attention.stream_probe"):
        return 2
    rows = []
    if args.layout_sweep:
        # Stage counts around 64 KB in flight per SM (the best of the first sweep), within shared memory.
        for mode, tile_rows, stage_counts in (("static", 128, (2, 3, 4)), ("static", 64, (3, 4, 5, 6)),
                                              ("kv", 128, (2, 3)), ("kv", 64, (2, 3, 4))):
            for stages in stage_counts:
                rows.append(probe(268435456, mode, 128, stages=stages, heads=8, tile_rows=tile_rows))
        return _write(args.json, rows)
    if args.stages_sweep:
        for mb in (268435456, 134217728):
            for stages in (2, 3, 4, 5, 6):
                rows.append(probe(mb, "static", 128, stages=stages, heads=8))
        return _write(args.json, rows)
    for mb in (268435456, 134217728):
        rows.append(probe(mb, "static", 128))
        rows.append(probe(mb, "static", 128, heads=8))  # the paged cache's interleaved kv heads
        rows.append(probe(mb, "static", 264, stages=2))
        for grid, stages in ((1024, 2), (2048, 2), (4096, 2), (1024, 3)):  # more programs than fit: the
            rows.append(probe(mb, "static", grid, stages=stages))          # block scheduler balances the SMs
        rows.append(probe(mb, "dynamic", 132, 512 * 1024))
    return _write(args.json, rows)


def _write(path: str, rows: list[dict]) -> int:
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "num_sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "command": "python3 -m bench.attention.stream_probe " + " ".join(sys.argv[1:])}
    with open(path, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
