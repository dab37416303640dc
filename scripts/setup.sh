#!/usr/bin/env bash
# Set up Latent Studio in ./.venv: the CPU build of torch first (a bare "torch" requirement
# would pull a multi-GB CUDA build), then the project with its UI extras.
#   bash scripts/setup.sh          # for using the studio
#   bash scripts/setup.sh --test   # also the test tools and headless Chromium for browser tests
# GPU users: install the CUDA torch of your choice into .venv first, then run this with
#   TORCH_SPEC=skip bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
if [ "${TORCH_SPEC:-torch==2.13.0}" != skip ] && ! python -c "import torch" 2>/dev/null; then
  pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if [ "${1:-}" = "--test" ]; then
  pip install -q -e ".[ui,test]"
  if ! command -v chromium >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install Debian's chromium; browser tests will fail" >&2
  fi
else
  pip install -q -e ".[ui]"
fi
echo "setup: ready ($(python -c 'import torch; print("torch", torch.__version__)'))"
