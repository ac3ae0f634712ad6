"""Benchmark of the paged attention kernels on a CUDA GPU, beside torch SDPA and the device copy bandwidth.

    python3 -m bench.attention.benchmark --json bench/results/kernels_h100.json --md bench/results/kernels_h100.md

Every prefill shape (head dims 128 and 64, 1k to 16k tokens per sequence, 16k tokens per launch) and decode shape
(1 to 256 sequences of 4k or 32k keys) runs on pages of 16 and 64 keys with the kernel the worker would pick
(timing.py says how each is timed); the peers run once per shape on contiguous K/V.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.attention.report import compiled_resources, write_markdown
from bench.attention.timing import (
    PAGE_SIZES,
    bench_decode,
    bench_prefill,
    copy_bandwidth_tbps,
    require_cuda,
    run_meta,
)
from kernels import decode_gluon
from kernels.decode_attention import _decode_split_kernel, _decode_split_tma_kernel
from kernels.prefill_attention import _prefill_kernel

PREFILL_SEQS = (1024, 2048, 4096, 8192, 16384)
DECODE_SHAPES = ((1, 4096), (16, 4096), (64, 4096), (256, 4096), (8, 32768), (1, 32768))


def _copy_peers(row: dict, peer_row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in peer_row and key not in row:
            row[key] = peer_row[key]


def _decode_row(batch: int, context: int, block_size: int, peers: bool) -> dict:
    """One decode row; a shape whose kernel fails to compile or run is a result too."""
    try:
        return bench_decode(batch, context, None, None, peers=peers, block_size=block_size)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other rows still run
        return {"batch": batch, "context": context, "block_size": block_size, "error": repr(exc)[:300]}


def run() -> dict:
    report = {"copy_tbps": copy_bandwidth_tbps(), "copy_one_call_tbps": copy_bandwidth_tbps(1),
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
            row = _decode_row(batch, context, block_size, peers=not peer_row)
            print("decode", row, flush=True)
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
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    parser.add_argument("--md", help="where to write the markdown table")
    args = parser.parse_args(argv)
    if not require_cuda("bench.attention.benchmark"):
        return 2
    command = "python3 -m bench.attention.benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"meta": run_meta(command), **run()}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    if args.md:
        write_markdown(report, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
