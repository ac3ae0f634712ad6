#!/usr/bin/env bash
# One run on a GPU machine: compiled kernel tests (bf16), optionally a variant sweep, then the benchmark.
# Usage: OUT=dir [SWEEP=1] [TMA_SWEEP=1] [GLUON=1] [BENCH=0] [TESTS_K=expr] bash kernels/gpu_check.sh   (run from the repository root)
set -o pipefail
export PYTHONPATH=.:protos PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a results folder}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv \
  | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/nvidia_smi.txt"
timeout ${TESTS_TIMEOUT:-200} python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider ${TESTS_K:+-k $TESTS_K} 2>&1 \
  | tee "$OUT/kernels_gpu_tests.log"
if [ "${TMA_SWEEP:-0}" = 1 ]; then
  timeout 400 python3 -m kernels.bench --tma-sweep --json "$OUT/kernels_tma_sweep.json" 2>&1 | tee "$OUT/kernels_tma_sweep.log"
fi
if [ "${GLUON:-0}" = 1 ]; then
  timeout 420 python3 -m kernels.gluon_check --out "$OUT" 2>&1 | tee "$OUT/gluon_check.log"
fi
if [ "${SWEEP:-0}" = 1 ]; then
  timeout 330 python3 -m kernels.bench --sweep --json "$OUT/kernels_sweep.json" 2>&1 | tee "$OUT/kernels_sweep.log"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout 330 python3 -m kernels.bench --json "$OUT/kernels_h100.json" --md "$OUT/kernels_h100.md" 2>&1 \
    | tee "$OUT/kernels_bench.log"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,launch__registers_per_thread,smsp__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
  timeout 120 ncu --kernel-name regex:'_prefill_kernel|_decode_split_kernel' --launch-skip 4 --launch-count 2 \
    --metrics "$metrics" python3 -m kernels.profile_kernels 2>&1 | tee "$OUT/kernels_ncu.txt"
fi
