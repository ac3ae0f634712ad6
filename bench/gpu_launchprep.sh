#!/usr/bin/env bash
# One call on a bare H200 from the repository root, at most six minutes: bash bench/gpu_launchprep.sh OUT_DIR
# Checks and measures the attention launch memos (kernels/launch_memo.py):
# 1. alone on the GPU, bench/engine.py on the 1B and 8B: the rows of bench/gpu_all.sh that run attention eagerly,
#    a prompt prefilled alone and a decode batch of 64 beside a new prompt (host time per step and device time by
#    kernel), to set beside bench/results/engine_h200.md -> engine_h200_launchprep.{json,md};
# 2. at once, eight processes on the 16 cores: bench/attention_launch.py (host microseconds per attention call over
#    every layer's cache with the memos emptied before each call, kept, and as the worker runs, and whether all
#    give bit-identical outputs; host time, which the tests beside it on the GPU leave alone) ->
#    attention_launch_h200.{json,md}; every kernel test marked gpu, in six processes (Triton compiles on the host,
#    one core per process); the worker's GPU tests (tests/integration/test_worker_gpu*.py) -> gpu_tests_*.txt.
# Everything lands in OUT_DIR/launchprep.tar.gz, and a summary on stdout. Wheels the machine lacks come from .whl/
# (bench/gpu_env.sh). ENGINE=0 skips the engine benchmark; LAUNCH_ARGS adds arguments to bench/attention_launch.py
# (a CPU rehearsal: ENGINE=0 TRITON_INTERPRET=1 LAUNCH_ARGS="--device cpu --dtype float32 --models llama-3.2-1b
# --layers 2 --rounds 2 --prompt-len 16 --decode-batches 2 --decode-context 40" bash bench/gpu_launchprep.sh DIR).
set -uo pipefail
OUT="${1:?usage: bench/gpu_launchprep.sh OUT_DIR}"
RUN="$(mktemp -d /tmp/flashstream-launchprep.XXXXXX)"
mkdir -p "$OUT"
source bench/gpu_env.sh "$RUN/gpu_env.log"
python3 - <<'PY' > "$RUN/gpu_environment.txt" 2>&1
from importlib import metadata
for name in ("torch", "triton", "grpcio", "protobuf", "transformers", "tokenizers", "safetensors"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} missing")
PY
cat "$RUN/gpu_environment.txt"

if [ "${ENGINE:-1}" = 1 ]; then
  # max_num_seqs 256 (the largest batch) leaves the 64-row mixed step whole, as in bench/gpu_all.sh's run.
  timeout "${ENGINE_TIMEOUT_S:-140}" python3 bench/engine.py --models llama-3.2-1b,llama-3.1-8b --batch-sizes 64,256 \
    --prompt-len 448 --decode-steps 32 --profile-batches 64 --prefill-len 512 \
    --out-dir "$RUN" --out-name engine_h200_launchprep > "$RUN/engine.log" 2>&1
  echo "engine: exit $?"
fi

LIMIT="${TESTS_TIMEOUT_S:-190}"
run_tests() {  # name, then test paths
  local name=$1; shift
  timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE "$@" > "$RUN/gpu_tests_$name.txt" 2>&1
  echo "tests $name: exit $? ($(tail -n 1 "$RUN/gpu_tests_$name.txt"))"
}
first=(tests/kernels/test_prefill_gluon.py tests/kernels/test_decode_gluon.py tests/kernels/test_decode_attention.py
       tests/kernels/test_prefill_attention.py tests/kernels/test_launch_memo.py
       tests/kernels/test_large_cache_offsets.py)
rest=()
for file in tests/kernels/test_*.py; do
  [[ " ${first[*]} " == *" $file "* ]] || rest+=("$file")
done
# The Gluon kernels' tests compile a variant per case: each file in two processes.
run_tests kernels_prefill_gluon_ragged tests/kernels/test_prefill_gluon.py -k ragged_paged_batches &
run_tests kernels_prefill_gluon_rest tests/kernels/test_prefill_gluon.py -k "not ragged_paged_batches" &
run_tests kernels_decode_gluon_ragged tests/kernels/test_decode_gluon.py -k ragged_contexts &
run_tests kernels_decode_gluon_rest tests/kernels/test_decode_gluon.py -k "not ragged_contexts" &
run_tests kernels_attention "${first[@]:2}" &
run_tests kernels_rest "${rest[@]}" &
run_tests worker tests/integration/test_worker_gpu*.py &
# shellcheck disable=SC2086 # LAUNCH_ARGS is a list of arguments
( timeout "$LIMIT" python3 bench/attention_launch.py --out "$RUN/attention_launch_h200" ${LAUNCH_ARGS:-} \
    > "$RUN/attention_launch.log" 2>&1
  echo "attention_launch: exit $? (exit 1: a fresh and a memoized call gave different outputs)" ) &
wait

tar czf "$OUT/launchprep.tar.gz" -C "$RUN" .
echo "== attention launch (host us per call)"
grep '^|' "$RUN/attention_launch_h200.md" 2>/dev/null || tail -n 5 "$RUN/attention_launch.log"
echo "== engine: attention-eager steps (bench/results/engine_h200.md has main's)"
grep -E '^\| (llama|prefill of one prompt|decode batch 64 \+ one prompt)' "$RUN/engine_h200_launchprep.md" 2>/dev/null \
  || tail -n 5 "$RUN/engine.log" 2>/dev/null || echo "(no engine run)"
