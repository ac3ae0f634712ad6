#!/usr/bin/env bash
# FlashStream developer entry point.
#   ./dev.sh up     create .venv, install, start the whole stack on the demo model and stream an answer
#   ./dev.sh test   create .venv, install with test extras, install redis-server if missing, run the tests
# Extra arguments go to `flashstream up` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-}"; shift || true
PY="${PYTHON:-python3}"

install() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  local stamp=".venv/.installed-${extras:-runtime}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # Machines without a GPU take the CPU builds of torch and triton (see constraints-cpu.txt).
    local constraints=()
    if ! command -v nvidia-smi >/dev/null 2>&1; then constraints=(-c constraints-cpu.txt); fi
    .venv/bin/python -m pip install -q --no-cache-dir "${constraints[@]}" -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then return; fi
  echo "installing redis-server (the integration tests start their own on a free port)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
}

case "$cmd" in
  up)
    install ""
    exec .venv/bin/flashstream up "$@"
    ;;
  test)
    install test
    ensure_redis
    export HF_HUB_OFFLINE=1
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: ./dev.sh up [flashstream up options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
