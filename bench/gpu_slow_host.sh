#!/usr/bin/env bash
# The 1B's prompt steps on a slower host, from the repository root: bash bench/gpu_slow_host.sh OUT_DIR
# The 1B's ShareGPT-like set at the default --piecewise-max-tokens (2,048) and under piecewise graphs over the whole
# step budget (8,192), first on the host as it is (OUT_DIR/serve_fast.*), then SLOW_ROUNDS times (default 2) with
# the worker's threads held to cores 0 and 1, each of which also runs a busy loop (OUT_DIR/serve_slow<round>.*):
# the worker gets about half the CPU it had, every other stage and the load client keep theirs. It stands in for a
# host whose cores are slower (an H200 machine's, `attention_launch_h200.md`), with the operating system's time
# slices as added jitter. Wheels in .whl/ as bench/gpu_serve.sh says.
set -uo pipefail
OUT="${1:?usage: bench/gpu_slow_host.sh OUT_DIR}"
mkdir -p "$OUT"
LOG="$OUT/serve.log"
source bench/gpu_env.sh "$LOG"
PAIR='1B ShareGPT 1000 at once, greedy$;1B ShareGPT 1000 at once, greedy, piecewise graphs to 8192 tokens$'
suite() {  # suite OUT_NAME: the pair, one stack after the other
  timeout 230 python3 -m bench.serve_suite --device gpu --out "$OUT/$1" --log-dir "/tmp/flashstream-logs/$1" \
    --deadline-s 170 --scenarios "$PAIR" >> "$LOG" 2>&1 || echo "$1: suite ended with $?" | tee -a "$LOG"
}
suite serve_fast
taskset -c 0 sh -c 'while :; do :; done' & BUSY0=$!
taskset -c 1 sh -c 'while :; do :; done' & BUSY1=$!
# Each worker the suite starts is pinned, every thread of it, within 0.2 s of its start; threads it starts later
# inherit the pinning.
(pinned=""; while :; do
   for pid in $(pgrep -f 'services.cli serve worker'); do
     case " $pinned " in *" $pid "*) ;; *) taskset -a -p -c 0,1 "$pid" > /dev/null 2>&1 && pinned="$pinned $pid" \
       && echo "worker $pid held to cores 0 and 1" >> "$LOG";; esac
   done
   sleep 0.2
 done) & PINNER=$!
for round in $(seq 1 "${SLOW_ROUNDS:-2}"); do suite "serve_slow$round"; done
kill "$PINNER" "$BUSY0" "$BUSY1" 2>/dev/null
grep -h -E '^\| 1B' "$OUT"/serve_*.md
