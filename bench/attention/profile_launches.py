"""Launches for a profiler to read: prefill (4 x 4096, d128, causal) and decode (16 x 4096 on 16-key pages, 1 x 32768
on 64-key pages, d128; decode-page64: 16 x 4096 on 64-key pages), each in the benchmark's own setup.

    ncu --clock-control none --kernel-name regex:'_prefill_kernel|_decode_split|_decode_hopper' --launch-skip 2 \\
        --launch-count 2 --metrics <list> python3 -m bench.attention.profile_launches [prefill|decode|decode-page64]
"""

from __future__ import annotations

import sys

import torch

from bench.attention.timing import bench_decode, bench_prefill


def main(argv: list[str]) -> None:
    # Each bench call warms up and repeats; the profiler's launch filter picks launches of each kernel.
    which = argv[0] if argv else "all"
    if which in ("prefill", "all"):
        print(bench_prefill(4096, 128, None, peers=False))
    if which in ("decode", "all"):
        print(bench_decode(16, 4096, None, None, peers=False))
        print(bench_decode(1, 32768, None, None, peers=False, block_size=64))
    if which == "decode-page64":
        print(bench_decode(16, 4096, None, None, peers=False, block_size=64))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
