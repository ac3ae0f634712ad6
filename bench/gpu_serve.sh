#!/usr/bin/env bash
# The GPU run on a bare machine, from the repository root: bash bench/gpu_serve.sh OUT_DIR
# 1. the GPU tests (GPU_TEST_FILES, default: the worker on CUDA, its graphs and overlapped steps, guided decoding,
#    the encoder in bf16) -> OUT_DIR/gpu_tests.txt
# 2. the serving suite (bench/serve_suite.py) -> OUT_DIR/serve_gpu.{json,md,png,log}, serve_gpu_profile.{md,json}
# 3. the stages' logs -> OUT_DIR/logs.tgz
# Packages the machine lacks (grpcio-health-checking, grpcio-reflection, redis, py-spy, and cryptography, with which
# `flashstream up` makes the stack's internal certificates) are installed from wheels
# in .whl/ when that folder exists, made beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       grpcio-health-checking==1.84.0 grpcio-reflection==1.84.0 redis hiredis py-spy xgrammar==0.2.8 \
#       apache-tvm-ffi==0.1.15.post2 pydantic pydantic-core annotated-types typing-inspection typing-extensions \
#       jsonschema jsonschema-specifications referencing rpds-py attrs cryptography cffi pycparser
# SUITE_DEADLINE_S (default 360): no scenario starts later than this many seconds into the suite.
# SUITE_SCENARIOS: parts of scenario names to run, separated by semicolons (default all); GPU_TESTS=0 skips step 1.
set -uo pipefail
OUT="${1:?usage: bench/gpu_serve.sh OUT_DIR}"
mkdir -p "$OUT"
LOG="$OUT/serve_gpu.log"
source bench/gpu_env.sh "$LOG"
python3 - >> "$LOG" 2>&1 <<'PY' || { echo "missing python packages (see $LOG)"; exit 1; }
import grpc_health, grpc_reflection, aiohttp, prometheus_client, tokenizers, cryptography  # noqa: F401  the stack's
PY
GPU_TEST_FILES="${GPU_TEST_FILES:-tests/integration/test_worker_gpu.py tests/integration/test_worker_gpu_graphs.py
  tests/integration/test_worker_gpu_overlap.py tests/integration/test_guided_gpu.py tests/unit/worker/test_encoder.py}"
# shellcheck disable=SC2086  # a list of paths
[ "${GPU_TESTS:-1}" = 0 ] || timeout "${GPU_TESTS_TIMEOUT_S:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE \
  $GPU_TEST_FILES 2>&1 | tail -n 40 > "$OUT/gpu_tests.txt"
timeout "${SUITE_TIMEOUT_S:-470}" python3 -m bench.serve_suite --device gpu --out "$OUT/serve_gpu" --log-dir /tmp/flashstream-logs \
  --deadline-s "${SUITE_DEADLINE_S:-360}" --scenarios "${SUITE_SCENARIOS:-}" 2>&1 | tee -a "$LOG"
tar czf "$OUT/logs.tgz" -C /tmp flashstream-logs 2>/dev/null
