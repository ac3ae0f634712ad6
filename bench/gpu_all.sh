#!/usr/bin/env bash
# One call on a bare GPU machine, from the repository root: bash bench/gpu_all.sh OUT_DIR
# 1. the engine benchmark, 1B and 8B (step times by batch, device time by kernel, a prompt prefilled alone)
#    -> OUT_DIR/engine_h200.{json,md}
# 2. the structured-output benchmark, 1B and 8B -> OUT_DIR/structured_h200.{json,md}
# 3. every test marked `gpu`, in three processes at once (kernels; the worker on CUDA with graphs, overlapped
#    steps and guided decoding; the worker's units) -> OUT_DIR/gpu_tests_*.txt
# Each part has its own time limit, so the whole call ends within ten minutes. Wheels the machine lacks come from
# .whl/ as bench/gpu_serve.sh says; ENGINE=0 or STRUCTURED=0 skip a benchmark.
set -uo pipefail
OUT="${1:?usage: bench/gpu_all.sh OUT_DIR}"
mkdir -p "$OUT"
source bench/gpu_env.sh "$OUT/gpu_all.log"
python3 - <<'PY' 2>&1 | tee "$OUT/gpu_environment.txt"
from importlib import metadata
for name in ("torch", "triton", "grpcio", "protobuf", "transformers", "tokenizers", "safetensors", "xgrammar"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} missing")
PY
if [ "${ENGINE:-1}" = 1 ]; then
  timeout 170 python3 bench/engine.py --models llama-3.2-1b,llama-3.1-8b --batch-sizes 1,64,256,512,1024 \
    --prompt-len 448 --decode-steps 32 --profile-batches 64,256,1024 --prefill-len 512 \
    --out-dir "$OUT" --out-name engine_h200 > "$OUT/engine.log" 2>&1 || echo "engine benchmark failed (engine.log)"
fi
if [ "${STRUCTURED:-1}" = 1 ]; then
  timeout 150 python3 bench/structured.py --model llama-3.2-1b,llama-3.1-8b --batch 64 --num-compile 10 \
    --out-dir "$OUT" --out-name structured_h200 > "$OUT/structured.log" 2>&1 || echo "structured benchmark failed"
fi
# Triton compiles on the host, one core per process: three processes share the GPU to finish sooner.
LIMIT="${TESTS_TIMEOUT_S:-270}"
run_tests() {  # name, then test paths
  local name=$1; shift
  timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE "$@" > "$OUT/gpu_tests_$name.txt" 2>&1
  echo "$name: exit $? ($(tail -n 1 "$OUT/gpu_tests_$name.txt"))"
}
run_tests kernels tests/kernels &
run_tests worker tests/integration/test_worker_gpu.py tests/integration/test_worker_gpu_graphs.py \
  tests/integration/test_worker_gpu_overlap.py tests/integration/test_guided_gpu.py &
run_tests units tests/unit/worker &
wait
