#!/usr/bin/env bash
# On a CUDA machine: the GPU machine's library versions, the generated stubs importing with them, and every
# test marked `gpu` in the repository (kernels compiled in bf16, the worker on CUDA, the sampler on CUDA),
# plus a CPU-only run of the stage tests that need no GPU, to show the code runs on these versions too.
# Run from the repository root: `bash bench/gpu_all.sh`; logs go to $OUT (default bench/results/gpu_run).
# Where grpcio-health-checking / grpcio-reflection are missing, install their wheels to a folder on PYTHONPATH.
set -u -o pipefail
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONPATH=.:protos${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 - <<'PY'
from importlib import metadata
for name in ("torch", "triton", "grpcio", "protobuf", "transformers", "tokenizers", "safetensors"):
    print(f"{name} {metadata.version(name)}")
from flashstream.v1 import common_pb2, gateway_pb2_grpc, scheduler_pb2_grpc, tokenizer_pb2_grpc, worker_pb2_grpc
print("flashstream.v1 stubs import: ok")
PY
} 2>&1 | tee "$OUT/gpu_environment.txt"
timeout 520 python3 -m pytest -q -p no:cacheprovider -m gpu -rA --ignore=tests/integration/test_gateway_openai_client.py tests 2>&1 | tail -n 80 | tee "$OUT/gpu_tests_all.txt"
# CPU tests of the stages on this machine's library versions (grpcio-tools is not installed here, so the
# stub regeneration test is left out).
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/unit/scheduler tests/unit/tokenizer tests/unit/common \
    tests/unit/gateway tests/unit/worker/test_runner_exactness.py -k "not regenerated_modules" 2>&1 \
    | tail -n 5 | tee "$OUT/cpu_tests_on_gpu_machine.txt"
