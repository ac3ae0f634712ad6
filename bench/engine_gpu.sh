#!/usr/bin/env bash
# On a CUDA machine: the worker's GPU tests (and the CUDA cases of the kernels the decode step adds), then the
# engine benchmark (1B and 8B dummy weights, bf16; decode sequential and with two plans in flight) with a profile of batch-1 decode and a batch-1 GEMM probe.
# Logs and results go to $OUT (default bench/results/gpu_run); copy the results worth keeping to bench/results/.
set -u -o pipefail
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONPATH=.:protos HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/integration/test_worker_gpu.py \
    tests/integration/test_worker_gpu_graphs.py tests/integration/test_worker_gpu_overlap.py tests/kernels/test_argmax.py tests/kernels/test_rotary_cache_write.py \
    2>&1 | tee "$OUT/gpu_tests.log"
timeout 330 python3 bench/engine.py --models "${MODELS:-llama-3.2-1b,llama-3.1-8b}" --profile --gemv-probe \
    --out-name engine_h100 --out-dir "$OUT" 2>&1 | tee "$OUT/engine_bench.log"
