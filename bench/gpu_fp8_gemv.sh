#!/usr/bin/env bash
# The split-K FP8 GEMV on a bare GPU machine, from the repository root, in about five minutes:
#   bash bench/gpu_fp8_gemv.sh OUT_DIR
# 1. the gpu-marked FP8 tests (kernels; the FP8 model on CUDA), three pytest processes at once (Triton compiles
#    on the host, one core each) -> fp8_gemv_tests_{gemv,linear,worker}.txt
# 2. the projections alone, llama-3.1-8b and llama-3.2-1b, at 1 to 16 rows with the GEMV in every candidate config
#    and at 32 rows with its default, against bf16 F.linear, _scaled_mm and the dequantising kernel
#    (bench/fp8.py --sweep-rows) -> fp8_gemv_sweep_h200.{json,md}
# 3. the 8B's and the 1B's decode step at batch 1 and prefill, bf16 against FP8 weights and FP8 weights with the
#    FP8 lm_head (bench/fp8.py; bench/engine.py has no FP8 option: bench/results/fp8_h200.md's batch-1 step came
#    from bench/fp8.py too) -> fp8_e2e_h200.*
# Each part has its own time limit. OUT_DIR gets fp8_gemv.tgz (everything, logs included), the two result
# markdowns and the test summaries; a summary goes to stdout. Wheels the machine lacks come from .whl/
# (bench/gpu_env.sh). SWEEP_ROWS, E2E=0, TESTS=0, E2E_MODELS, E2E_VARIANTS and E2E_BATCHES change what runs.
# Without a CUDA GPU (a rehearsal) the tests report their skips, the sweep exits 2 with a message, the end-to-end
# part is skipped, and OUT_DIR/fp8_gemv.tgz is written.
set -uo pipefail
OUT="${1:?usage: bench/gpu_fp8_gemv.sh OUT_DIR}"
RUN="$(mktemp -d /tmp/flashstream-fp8gemv.XXXXXX)"
mkdir -p "$OUT"
source bench/gpu_env.sh "$RUN/gpu_env.log"

if [ "${TESTS:-1}" = 1 ]; then
  run_tests() {  # name, then test paths
    local name=$1; shift
    timeout "${TESTS_TIMEOUT_S:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE "$@" \
      > "$RUN/fp8_gemv_tests_$name.txt" 2>&1
    echo "tests $name: exit $? ($(tail -n 1 "$RUN/fp8_gemv_tests_$name.txt"))" | tee -a "$RUN/fp8_gemv_tests.txt"
  }
  run_tests gemv tests/kernels/test_fp8_gemv.py &
  run_tests linear tests/kernels/test_fp8_linear.py tests/kernels/test_fp8_kv_cache.py &
  run_tests worker tests/unit/worker/test_fp8_weights.py tests/unit/worker/test_fp8_kv_cache.py &
  wait
fi

# Alone on the GPU from here: the timings.
timeout "${SWEEP_TIMEOUT_S:-170}" python3 bench/fp8.py --models llama-3.1-8b,llama-3.2-1b \
  --sweep-rows "${SWEEP_ROWS:-1,2,4,8,16,32}" --no-tests --out-name fp8_gemv_sweep_h200 --out-dir "$RUN" \
  > "$RUN/fp8_gemv_sweep.log" 2>&1
echo "sweep: exit $?"

if ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "end to end: skipped, no CUDA GPU (it would build the 8B on the CPU)"
elif [ "${E2E:-1}" = 1 ]; then
  timeout "${E2E_TIMEOUT_S:-200}" python3 bench/fp8.py --models "${E2E_MODELS:-llama-3.1-8b,llama-3.2-1b}" \
    --variants "${E2E_VARIANTS:-bf16,fp8 weights,fp8 weights + fp8 lm_head}" \
    --batch-sizes "${E2E_BATCHES:-1}" --prompt-len 128 --decode-steps 32 --prefill-len 512 --prefill-repeats 1 \
    --max-num-batched-tokens 4096 --probe-rows '' --attention-cases '' --no-tests \
    --out-name fp8_e2e_h200 --out-dir "$RUN" > "$RUN/fp8_e2e.log" 2>&1
  echo "end to end: exit $?"
fi

tar czf "$OUT/fp8_gemv.tgz" -C "$RUN" .
cp "$RUN"/fp8_gemv_sweep_h200.md "$RUN"/fp8_e2e_h200.md "$RUN"/fp8_gemv_tests.txt "$OUT"/ 2>/dev/null
echo "== a layer's projections summed, µs (bench/results/fp8_h200.md has main's kernels)"
awk '/^### .*summed/ {on = 1} on {print} on && /^$/ && seen {on = 0; seen = 0} on && /^\|/ {seen = 1}' \
  "$RUN/fp8_gemv_sweep_h200.md" 2>/dev/null || tail -n 5 "$RUN/fp8_gemv_sweep.log"
grep -h 'failed:' "$RUN/fp8_gemv_sweep_h200.md" 2>/dev/null
echo "== decode step (ms, host step / graph replay); 8B at batch 1: bf16 4.731 / 4.623, FP8 about 3.1 replayed"
grep -E '^## |^\| (variant|bf16|fp8 weights) ' "$RUN/fp8_e2e_h200.md" 2>/dev/null || tail -n 5 "$RUN/fp8_e2e.log" 2>/dev/null
cat "$RUN/fp8_gemv_tests.txt" 2>/dev/null
