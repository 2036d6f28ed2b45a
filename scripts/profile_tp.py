#!/usr/bin/env python3
"""GPU: where a tensor-parallel decode step spends its time. Prints (1) the latency of one 8 KiB
all-reduce through the span's group, CPU-side and end to end, and (2) the top CPU ops of rank 0 over
decode steps of a TP=2 span (torch.profiler), next to the same for TP=1.

    python scripts/profile_tp.py [--model random:llama-3-8b] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_meta
    from swarmd.types import LayerSpan

    model_cfg = ModelConfig(source=args.model, cache_dir=Path(tempfile.mkdtemp()))
    loaded = load_meta(model_cfg, EngineConfig(device="cuda:0"))
    span = LayerSpan(0, loaded.num_layers, loaded.num_layers)
    for tp in (1, 2):
        one(loaded, model_cfg, span, tp, args.steps)


def one(loaded, model_cfg, span, tp: int, steps: int) -> None:  # type: ignore[no-untyped-def]
    import torch
    from torch.profiler import ProfilerActivity, profile

    from swarmd.config import EngineConfig
    from swarmd.engine.runtime import load_stage
    from swarmd.engine.step_plan import Row

    stage = load_stage(loaded, model_cfg, EngineConfig(device="cuda:0", dtype="bfloat16", tensor_parallel=tp), span)
    pool = stage.new_pool(16)
    cache = pool.allocate(200)
    stage.forward_batch([Row(torch.arange(64), 0, cache)])
    pos = [64]

    def step() -> None:
        stage.forward_batch([Row(torch.tensor([5]), pos[0], cache)])
        pos[0] += 1

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    print(f"TP={tp}: {1000 * (time.perf_counter() - t) / steps:.2f} ms per decode step", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10), flush=True)
    if tp == 2:
        stage.close()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
