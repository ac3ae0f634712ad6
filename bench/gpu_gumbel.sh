#!/usr/bin/env bash
# The sampling race on a bare GPU machine, from the repository root: bash bench/gpu_gumbel.sh OUT_DIR
# 1. two pytest processes at once: the race kernel's tests and the sampler's (CPU and CUDA); the worker on CUDA
#    (plain, graphs, two steps in flight) -> gpu_gumbel_tests_{race,worker}.txt
# 2. bench/sampling_bench.py at 64 x 128256 fp32 -> sampling_h200.{json,md}
# Everything lands in one file, OUT_DIR/gumbel_h200.tgz (a folder gumbel_h200/); a summary goes to stdout. About two
# minutes; each part has its own time limit, so the call ends within four. SAMPLING_ARGS adds arguments to the
# benchmark (a rehearsal on the CPU: TRITON_INTERPRET=1 SAMPLING_ARGS="--device cpu --rows 4 --vocab 5000 --iters 3").
set -uo pipefail
OUT="${1:?usage: bench/gpu_gumbel.sh OUT_DIR}"
RUN="$OUT/gumbel_h200"
mkdir -p "$OUT" "$RUN"
source bench/gpu_env.sh "$RUN/gpu_gumbel.log"
run_tests() {  # name, then test paths
  local name=$1; shift
  timeout 140 python3 -m pytest -q -p no:cacheprovider -rfE "$@" > "$RUN/gpu_gumbel_tests_$name.txt" 2>&1
  echo "tests $name: exit $? ($(tail -n 1 "$RUN/gpu_gumbel_tests_$name.txt"))"
}
run_tests race tests/kernels/test_gumbel_race.py tests/unit/worker/test_sampler.py \
  tests/unit/worker/test_sampler_seeded.py tests/unit/worker/test_sampler_reference.py \
  tests/unit/worker/test_sampler_race.py tests/unit/worker/test_greedy_fast_path.py &
run_tests worker tests/integration/test_worker_gpu.py tests/integration/test_worker_gpu_graphs.py \
  tests/integration/test_worker_gpu_overlap.py &
wait
# shellcheck disable=SC2086  # a list of arguments
timeout 90 python3 bench/sampling_bench.py --out "$RUN/sampling_h200" ${SAMPLING_ARGS:-} \
  > "$RUN/sampling_bench.log" 2>&1
echo "sampling bench: exit $?"
sed -n '/^## /,$p' "$RUN/sampling_h200.md" 2>/dev/null || tail -n 20 "$RUN/sampling_bench.log"
tar czf "$OUT/gumbel_h200.tgz" -C "$OUT" gumbel_h200 && rm -r "$RUN"
