"""One prefill launch (4 x 4096, d128, causal) and one decode launch (16 x 4096, d128) for a profiler to read.

    ncu --kernel-name regex:'_prefill_kernel|_decode_split_kernel' --launch-skip 2 --launch-count 2 \\
        --metrics <list> python3 -m kernels.profile_kernels
"""

from __future__ import annotations

import torch

from kernels.bench import bench_decode, bench_prefill


def main() -> None:
    # Each bench call warms up and repeats; the profiler's launch filter picks two launches of each kernel.
    print(bench_prefill(4096, 128, None, peers=False))
    print(bench_decode(16, 4096, None, None, peers=False))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
