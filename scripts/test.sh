#!/usr/bin/env bash
# Install everything, then run the whole test suite (unit, engine, API, daemon, and the
# SmolLM2 end-to-end tests; the GGUF is converted once into .cache/ and reused).
#   ./scripts/test.sh [pytest args]      e.g. ./scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export SWARMD_TEST_CACHE=${SWARMD_TEST_CACHE:-$PWD/.cache/swarmd}
exec python -m pytest -q -p no:cacheprovider "$@"
