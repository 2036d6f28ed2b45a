#!/usr/bin/env bash
# On the lent GPU machine (python3 with torch, triton, transformers preinstalled): install the wheels
# carried in .whl/ (what the image lacks: zeroconf, cryptography, gguf, pytest-asyncio, ...), then run
# the parts named on the command line, each bounded by a time limit, all output into ${OUT:-bench}/suite.log:
#   tests       GPU-only tests and the paged-kernel tests                 -> gpu_tests.txt
#   engine      scripts/bench_engine.py (the engine alone)                -> gpu_engine_bare.{json,md}
#   bench       scripts/bench_gpu.py (generate, compiled, daemons)        -> gpu_engine.{json,md}
#   bench:ROWS  the same, only those rows, in that order (merged into an earlier bench/gpu_engine.json)
#   fresh:ROWS  those rows, in that order, nothing merged
#   ./scripts/gpu_suite.sh tests:90 engine:150 bench:limit,ring1:300     (NAME:SECONDS sets a part's limit)
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-bench}
LOG="$DEST/suite.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,clocks.sm --format=csv
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
} >>"$LOG" 2>&1
# Rows measured by an earlier call on this machine (fetched into bench/) are merged, not lost.
[ "$DEST" != bench ] && [ -f bench/gpu_engine.json ] && cp bench/gpu_engine.json "$DEST/gpu_engine.json"
for arg in "$@"; do
  limit=600
  part=$arg
  if [[ "$arg" =~ ^(.*):([0-9]+)$ ]]; then part=${BASH_REMATCH[1]}; limit=${BASH_REMATCH[2]}; fi
  echo "=== $part (limit ${limit}s) $(date +%T)" >>"$LOG"
  case "$part" in
    tests) timeout "$limit" python3 -m pytest -q -p no:cacheprovider -s tests/engine/test_gpu_graphs.py \
             tests/engine/test_paged_attention.py >"$DEST/gpu_tests.txt" 2>&1; tail -25 "$DEST/gpu_tests.txt" >>"$LOG" ;;
    engine) timeout "$limit" python3 scripts/bench_engine.py --out "$DEST/gpu_engine_bare" >>"$LOG" 2>&1 ;;
    bench) timeout "$limit" python3 scripts/bench_gpu.py --fresh --out "$DEST/gpu_engine" >>"$LOG" 2>&1 ;;
    fresh:*) timeout "$limit" python3 scripts/bench_gpu.py --fresh --out "$DEST/gpu_engine" --rows "${part#fresh:}" >>"$LOG" 2>&1 ;;
    bench:*) timeout "$limit" python3 scripts/bench_gpu.py --out "$DEST/gpu_engine" --rows "${part#bench:}" >>"$LOG" 2>&1 ;;
    *) echo "unknown part $part" >>"$LOG" ;;
  esac
  echo "=== $part exit $? $(date +%T)" >>"$LOG"
done
for f in /tmp/swb-*/n*.log; do  # the daemons' own logs, last lines
  [ -f "$f" ] && { echo "=== $f"; tail -15 "$f"; } >>"$LOG"
done
tail -60 "$LOG"
