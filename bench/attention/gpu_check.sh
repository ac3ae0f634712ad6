#!/usr/bin/env bash
# One run on a GPU machine: the compiled kernel tests (bf16), then the attention benchmark, optionally a profile.
# Usage, from the repository root: OUT=dir [BENCH=0] [PROFILE=1] [TESTS_K=expr] bash bench/attention/gpu_check.sh
set -o pipefail
export PYTHONPATH=.:protos PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a results folder}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv \
  | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/nvidia_smi.txt"
timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider ${TESTS_K:+-k $TESTS_K} 2>&1 \
  | tee "$OUT/kernels_gpu_tests.log"
if [ "${BENCH:-1}" = 1 ]; then
  timeout 330 python3 -m bench.attention.benchmark --json "$OUT/kernels.json" --md "$OUT/kernels.md" 2>&1 \
    | tee "$OUT/kernels_bench.log"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,launch__registers_per_thread,smsp__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
  timeout 120 ncu --kernel-name regex:'_prefill_kernel|_decode_split|_decode_hopper' --launch-skip 4 --launch-count 2 \
    --metrics "$metrics" python3 -m bench.attention.profile_launches 2>&1 | tee "$OUT/kernels_ncu.txt"
fi
