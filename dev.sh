#!/usr/bin/env bash
# FlashStream developer entry point.
#   ./dev.sh up     create .venv, install, start the whole stack on the demo model and stream an answer
#   ./dev.sh test   create .venv, install with test extras, install redis-server, chromium and docker-compose if
#                   missing, run the tests
# Extra arguments go to `flashstream up` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-}"; shift || true
PY="${PYTHON:-python3}"

# The CPU build of torch lives on the PyTorch index; PyPI's torch for Linux is the CUDA build.
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"

reachable() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5)
PY
}

install() {
  local extras="$1"
  local started=$SECONDS
  local stamp=".venv/.installed-${extras:-runtime}"
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    return
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "[1/4] creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
  else
    echo "[1/4] .venv exists"
  fi
  echo "[2/4] upgrading pip"
  .venv/bin/python -m pip install -q --upgrade pip
  local constraints=()
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "[3/4] a GPU is present: torch and triton come with the CUDA libraries (about 2.7 GB from PyPI)"
  else
    # Machines without a GPU take the CPU builds of torch and triton (see constraints-cpu.txt).
    constraints=(-c constraints-cpu.txt)
    if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
      echo "[3/4] torch is installed already"
    elif reachable "$CPU_TORCH_INDEX/torch/"; then
      echo "[3/4] torch: the CPU build from $CPU_TORCH_INDEX (about 190 MB)"
      .venv/bin/python -m pip install --no-cache-dir "${constraints[@]}" --index-url "$CPU_TORCH_INDEX" \
        --extra-index-url https://pypi.org/simple torch
    else
      echo "[3/4] torch: $CPU_TORCH_INDEX cannot be reached, so pip takes torch from the indexes it is"
      echo "      configured with. From PyPI alone that is the CUDA build: about 2.7 GB of downloads"
      echo "      (torch 530 MB plus nvidia-* libraries) where the CPU build is 190 MB."
    fi
  fi
  echo "[4/4] flashstream and its dependencies${extras:+ (extras: $extras)}, triton included (about 200 MB, mostly"
  echo "      a CUDA toolchain: the worker imports the kernels' modules even on the CPU)"
  .venv/bin/python -m pip install --no-cache-dir --progress-bar on "${constraints[@]}" -e ".${extras:+[$extras]}"
  touch "$stamp"
  echo "installed in $((SECONDS - started)) s"
}

# Debian packages the tests need: redis-server (the integration tests start their own on a free port),
# chromium (the playground's browser test drives /usr/bin/chromium through playwright; no browser download) and
# docker-compose (Compose v1, whose `config` checks docker-compose.yml without a Docker engine).
ensure_system_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  echo "installing ${missing[*]} with apt"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "$cmd" in
  up)
    install ""
    exec .venv/bin/flashstream up "$@"
    ;;
  test)
    install test
    ensure_system_packages
    export HF_HUB_OFFLINE=1
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: ./dev.sh up [flashstream up options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
