#!/usr/bin/env bash
# The GPU serving suite on a bare machine, run from the repository root: bash bench/gpu_serve.sh OUT_DIR
# Writes OUT_DIR/serve_gpu.{json,md,png} and OUT_DIR/serve_gpu.log (stage logs under OUT_DIR/logs).
# Packages the machine may lack (grpcio-health-checking, grpcio-reflection, redis) are installed from wheels in
# .whl/ when that folder exists, e.g. made beforehand with
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#       -d .whl grpcio-health-checking==1.84.0 grpcio-reflection==1.84.0 redis
set -uo pipefail
OUT="${1:?usage: bench/gpu_serve.sh OUT_DIR}"
mkdir -p "$OUT"
LOG="$OUT/serve_gpu.log"
SITE=/tmp/flashstream-site
if compgen -G ".whl/*.whl" > /dev/null; then
  pip install --no-index --no-deps --target "$SITE" .whl/*.whl >> "$LOG" 2>&1 || echo "wheel install failed (see log)" | tee -a "$LOG"
fi
export PYTHONPATH="$PWD:$PWD/protos:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
python - >> "$LOG" 2>&1 <<'PY' || { echo "missing python packages (see $LOG)"; exit 1; }
import grpc_health, grpc_reflection, aiohttp, prometheus_client, tokenizers  # noqa: F401  what the stack imports
PY
timeout 580 python -m bench.serve_suite --device gpu --out "$OUT/serve_gpu" --log-dir "$OUT/logs" 2>&1 | tee -a "$LOG"
