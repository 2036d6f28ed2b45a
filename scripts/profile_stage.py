#!/usr/bin/env python3
"""Where a stage's decode step goes: the bare ``StageModel.forward`` in a loop, the same through the
engine's worker thread (``Engine.forward``, what a daemon runs), and torch.profiler's top operators.

    python scripts/profile_stage.py [--model random:llama-3-8b] [--device cuda:0] [--steps 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    import torch

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import Engine, load_meta, load_stage
    from swarmd.engine.step_plan import Row
    from swarmd.types import LayerSpan, SamplingParams

    model_cfg, engine_cfg = ModelConfig(source=args.model), EngineConfig(device=args.device, threads=0)
    loaded = load_meta(model_cfg, engine_cfg)
    stage = load_stage(loaded, model_cfg, engine_cfg, LayerSpan(0, loaded.num_layers, loaded.num_layers))
    cuda = stage.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def decode(steps: int) -> list[float]:
        cache = stage.new_cache(128 + steps + 1)
        logits = stage.forward(torch.randint(0, stage.vocab_size, (1, 128)), 0, cache)
        times = []
        for i in range(steps):
            sync()
            t = time.perf_counter()
            tok = int(torch.argmax(logits[0]).item())
            logits = stage.forward(torch.tensor([[tok]]), 128 + i, cache)
            sync()
            times.append(1000 * (time.perf_counter() - t))
        return times

    decode(8)
    bare = decode(args.steps)
    print(f"bare StageModel.forward decode: p50 {statistics.median(bare):.2f} ms, min {min(bare):.2f} ms")

    async def through_engine() -> list[float]:
        engine = Engine(stage, engine_cfg, 1 << 30)
        await engine.open_session("s", 128 + args.steps + 1)
        greedy = (SamplingParams(0.0, 1.0, 0, 1), 1, 0)
        tok = await engine.forward("s", list(range(1, 129)), None, 0, greedy)
        times = []
        for i in range(args.steps):
            t = time.perf_counter()
            tok = await engine.forward("s", [int(tok)], None, 128 + i, (greedy[0], 1, i + 1))  # type: ignore[arg-type]
            times.append(1000 * (time.perf_counter() - t))
        await engine.close()
        return times

    def prefill(n: int, chunk: int) -> float:
        cache = stage.new_cache(n + 1)
        ids = torch.randint(0, stage.vocab_size, (1, n))
        sync()
        t = time.perf_counter()
        for pos in range(0, n, chunk):
            stage.forward(ids[:, pos:pos + chunk], pos, cache)
        sync()
        return 1000 * (time.perf_counter() - t)

    def last_logits(n: int, chunk: int) -> torch.Tensor:
        cache = stage.new_cache(n + 1)
        ids = torch.randint(0, stage.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
        for pos in range(0, n, chunk):
            out = stage.forward(ids[:, pos:pos + chunk], pos, cache)
        return out.float()

    whole, chunked = last_logits(1024, 1024), last_logits(1024, 256)
    print(f"chunked vs whole prefill, last logits: max |diff| {(whole - chunked).abs().max().item():.4g}, "
          f"argmax equal {bool(whole.argmax() == chunked.argmax())}")
    for n, chunk in ((2048, 2048), (2048, 256), (512, 512), (512, 128)):
        prefill(n, chunk)
        print(f"prefill {n} tokens in chunks of {chunk}: {min(prefill(n, chunk) for _ in range(3)):.1f} ms")

    eng = asyncio.run(through_engine())
    print(f"Engine.forward (worker thread) decode: p50 {statistics.median(eng):.2f} ms, min {min(eng):.2f} ms")

    def batched(b: int, steps: int = 16, context: int = 160) -> list[float]:
        """``b`` sessions decoding together: one forward_batch per step (what a stage runs under load)."""
        pool = stage.new_pool(b * (-(-(context + steps + 1) // 16)))
        caches = [pool.allocate(context + steps + 1) for _ in range(b)]
        for c in caches:
            stage.forward_batch([Row(torch.randint(0, stage.vocab_size, (context,)), 0, c)])
        times = []
        toks = [1] * b
        for i in range(steps):
            sync()
            t = time.perf_counter()
            rows = [Row(torch.tensor([toks[j]]), context + i, c) for j, c in enumerate(caches)]
            out = stage.forward_batch(rows)
            toks = torch.stack([o for o in out if o is not None]).argmax(-1).tolist()
            sync()
            times.append(1000 * (time.perf_counter() - t))
        return times

    def agreement(b: int = 16, steps: int = 32, context: int = 64) -> None:
        """Greedy decoding of ``b`` sessions batched vs each alone: the first step where a session's token
        differs, and the logit margin (top-1 minus top-2, alone) at that step."""
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(0, stage.vocab_size, (context,), generator=gen) for _ in range(b)]

        def run(together: bool) -> list[list[tuple[int, float]]]:
            pool = stage.new_pool(b * (-(-(context + steps + 1) // 16)))
            caches = [pool.allocate(context + steps + 1) for _ in range(b)]
            out: list[list[tuple[int, float]]] = [[] for _ in range(b)]
            groups = [list(range(b))] if together else [[j] for j in range(b)]
            for group in groups:
                for i in range(steps):
                    rows = [Row(prompts[j] if i == 0 else torch.tensor([out[j][-1][0]]),
                                0 if i == 0 else context + i - 1, caches[j]) for j in group]
                    for j, logits in zip(group, stage.forward_batch(rows), strict=True):
                        assert logits is not None
                        top = torch.topk(logits.float(), 2).values.tolist()
                        out[j].append((int(logits.argmax()), top[0] - top[1]))
            return out

        alone, together = run(False), run(True)
        firsts = []
        for a, t in zip(alone, together, strict=True):
            k = next((i for i, (x, y) in enumerate(zip(a, t, strict=True)) if x[0] != y[0]), None)
            firsts.append(None if k is None else (k, a[k][1]))
        same = sum(f is None for f in firsts)
        diverged = [f for f in firsts if f is not None]
        print(f"batched vs alone, {b} sessions x {steps} greedy steps: {same}/{b} identical"
              + ("; first divergences (step, alone top-1 minus top-2 logit): "
                 + ", ".join(f"({k}, {m:.4f})" for k, m in diverged) if diverged else ""))

    agreement()
    for b in (1, 16, 64):
        batched(b, 4)
        t = batched(b)
        print(f"forward_batch decode, {b} sessions: p50 {statistics.median(t):.2f} ms/step, "
              f"{b * 1000 / statistics.median(t):.0f} tokens/s")

    async def engine_sessions(b: int, steps: int = 32) -> float:
        engine = Engine(stage, engine_cfg, 8 << 30)
        greedy = SamplingParams(0.0, 1.0, 0, 1)

        async def one(k: int) -> None:
            await engine.open_session(f"s{k}", 128 + steps + 1)
            tok = await engine.forward(f"s{k}", list(range(1 + k, 129 + k)), None, 0, (greedy, 1, 0))
            for i in range(steps):
                tok = await engine.forward(f"s{k}", [int(tok)], None, 128 + i, (greedy, 1, i + 1))  # type: ignore[arg-type]

        t = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(b)))
        wall = time.perf_counter() - t
        print(f"Engine, {b} concurrent sessions: {engine.batched_steps / engine.batches:.1f} steps per batch, "
              f"{b * (steps + 1) / wall:.0f} tokens/s")
        await engine.close()
        return wall

    for b in (16, 64):
        asyncio.run(engine_sessions(b))

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        decode(5)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=50))
    with profile(activities=acts) as prof:
        batched(64, 3)
    print("64 sessions batched:")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50))


if __name__ == "__main__":
    main()
