#!/usr/bin/env bash
# The main job: install, start swarmd with the embedded default model, ask it a question over the
# local socket and print the streamed answer, then stop the daemon.
#   ./scripts/demo.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate

QUESTION=${1:-"What is the capital of France? Answer in one sentence."}
WORK=$(mktemp -d /tmp/swarmd-demo.XXXXXX)
SOCK="$WORK/swarmd.sock"
KEY="$WORK/swarm.key"
(umask 077 && swarmctl keygen > "$KEY")
export SWARMD_CACHE_DIR=${SWARMD_CACHE_DIR:-$PWD/.cache/swarmd}

# One node on this machine: no peers to discover, so mDNS stays off and the peer port is loopback-only.
swarmd --socket "$SOCK" --key-file "$KEY" --model smollm2-135m-instruct --log-level INFO --no-mdns \
  --listen 127.0.0.1:0 \
  > "$WORK/swarmd.log" 2>&1 &
PID=$!
cleanup() { kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "starting swarmd (first start converts the GGUF once; later starts take seconds)..." >&2
for _ in $(seq 1 600); do
  if swarmctl --socket "$SOCK" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/swarmd.log" >&2; exit 1; fi
  sleep 0.5
done
swarmctl --socket "$SOCK" status
echo
echo "Q: $QUESTION"
printf 'A: '
swarmctl --socket "$SOCK" chat "$QUESTION" --max-tokens 128 --temperature 0
