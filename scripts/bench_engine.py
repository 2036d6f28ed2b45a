#!/usr/bin/env python3
"""The engine alone, in one process (no daemon, no API): what the graphs give, and what the engine's
asyncio facade gives on top of them. The daemon's figure (scripts/bench_gpu.py) is compared with these.

Rows, for the same span and batch sizes:
  * ``graph``: one decode step replayed directly (DecodeGraphs.run on rows at 128-191 positions), ms/step;
  * ``eager``: the same step launched op by op (StageModel.forward_batch), ms/step;
  * ``engine``: N concurrent sessions through Engine.forward (128-token prompts, greedy), tokens/s.
Writes OUT.json and OUT.md.

    python scripts/bench_engine.py [--model random:llama-3-8b] [--out bench/gpu_engine_bare]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu_engine_bare"))
    args = ap.parse_args()
    import torch

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import Engine, load_model
    from swarmd.engine.step_plan import Row
    from swarmd.types import SamplingParams

    batches = [int(b) for b in args.batches.split(",")]
    cfg = EngineConfig(device=args.device, layers="auto", graph_max_batch=max(batches))
    loaded = load_model(ModelConfig(source=args.model, cache_dir=REPO / ".cache" / "bench"), cfg)
    stage = loaded.stage
    assert stage is not None
    kv = 80 * 2**30 if stage.device.type == "cuda" else 2**30
    engine = Engine(stage, cfg, kv)
    cuda = stage.device.type == "cuda"
    engine.prepare(static_decode=None if cuda else True)  # on a CPU: the static path, nothing captured
    graphs = engine._graphs
    results: dict[str, object] = {"model": args.model, "device": str(stage.device),
                                  "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
                                  "graphs": engine.graph_info, "rows": {}}
    rows_out: dict[str, dict[str, float]] = results["rows"]  # type: ignore[assignment]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    pool = engine._pool
    assert pool is not None
    vocab = stage.vocab_size
    for b in batches:
        caches = [pool.allocate(256) for _ in range(b)]
        for c in caches:
            stage.forward_batch([Row(torch.randint(0, vocab, (128,)), 0, c, logits=False)])
        sync()

        def step_rows(caches: list = caches) -> list[Row]:  # type: ignore[type-arg]
            return [Row(torch.randint(0, vocab, (1,)), c.length, c) for c in caches]

        def timed(fn, n: int = 40, caches: list = caches) -> list[float]:  # type: ignore[no-untyped-def,type-arg]
            for c in caches:
                c.commit(128)
            out = []
            for _ in range(n):
                rows = step_rows()
                sync()
                t = time.perf_counter()
                fn(rows)
                sync()
                out.append(1000 * (time.perf_counter() - t))
                if caches[0].length >= 250:
                    for c in caches:
                        c.commit(128)
            return out

        entry: dict[str, float] = {}
        if graphs is not None and graphs.fits(step_rows()):
            ms = timed(lambda rows: graphs.run(rows))
            entry["graph_ms"] = statistics.median(ms)
            entry["graph_ms_min"], entry["graph_ms_max"] = min(ms), max(ms)
        ms = timed(lambda rows: stage.forward_batch(rows), n=10)
        entry["eager_ms"] = statistics.median(ms)
        for c in caches:
            pool.release(c)
        rows_out[f"batch_{b}"] = entry
        print(b, entry, flush=True)

    greedy = SamplingParams(0.0, 1.0, 0, 0)

    async def sessions(n: int) -> float:
        async def one(i: int) -> int:
            sid = f"b{n}-{i}"
            await engine.open_session(sid, 128 + args.tokens + 1)
            prompt = torch.randint(0, vocab, (128,)).tolist()
            tok = await engine.forward(sid, prompt, None, 0, (greedy, i, 0))
            for k in range(1, args.tokens):
                tok = await engine.forward(sid, [tok], None, 128 + k - 1, (greedy, i, k))  # type: ignore[list-item]
            await engine.close_session(sid)
            return args.tokens

        t = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(n)))
        return sum(done) / (time.perf_counter() - t)

    async def run_sessions() -> None:
        await sessions(2)  # warm-up
        for b in batches:
            tps = [await sessions(b) for _ in range(2)]
            rows_out[f"batch_{b}"]["engine_tps"] = max(tps)
            g = rows_out[f"batch_{b}"].get("graph_ms")
            if g:
                rows_out[f"batch_{b}"]["graph_tps"] = 1000 * b / g
            print(b, rows_out[f"batch_{b}"], flush=True)
        await engine.close()

    asyncio.run(run_sessions())
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [f"# The engine alone ({args.model}, {results['gpu']})", "",
             f"`python scripts/bench_engine.py {' '.join(sys.argv[1:])}`; graphs: {engine.graph_info}", "",
             "| batch | graph ms/step | eager ms/step | graph tok/s | engine tok/s (asyncio facade) |",
             "|---|---|---|---|---|"]
    for name, r in rows_out.items():
        cells = [r.get("graph_ms"), r.get("eager_ms"), r.get("graph_tps"), r.get("engine_tps")]
        lines.append(f"| {name.removeprefix('batch_')} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                     + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
