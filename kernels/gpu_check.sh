#!/usr/bin/env bash
# One GPU session: compiled kernel tests (bf16), optionally a variant sweep, then the benchmark.
# Usage: OUT=dir [SWEEP=1] bash kernels/gpu_check.sh   (run from the repository root)
set -o pipefail
export PYTHONPATH=.:protos PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a results folder}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv \
  | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/nvidia_smi.txt"
timeout 150 python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider 2>&1 | tee "$OUT/kernels_gpu_tests.log"
if [ "${SWEEP:-0}" = 1 ]; then
  timeout 200 python3 -m kernels.bench --sweep --json "$OUT/kernels_sweep.json" 2>&1 | tee "$OUT/kernels_sweep.log"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout 200 python3 -m kernels.bench --json "$OUT/kernels_h100.json" --md "$OUT/kernels_h100.md" 2>&1 \
    | tee "$OUT/kernels_bench.log"
fi
