#!/usr/bin/env python3
"""GPU: tensor parallelism inside one node (TP=2 over two GPUs) vs TP=1, and single-GPU ``generate``,
the same random-weight bf16 model, same machine, one run.

1. Engine level, in this process: the whole model as one span with TP=1 on cuda:0 and with TP=2 on
   cuda:0+1 (a worker process for rank 1). Greedy decoding of several prompts: are the tokens the same?
   At the first divergence the TP=1 top-1 minus top-2 logit margin is reported (bf16 sums in another
   order can flip a near-tie). Decode ms/token at 1 session and tokens/s at 16 batched sessions.
2. Daemon level: a 1-node swarm (``swarmd --tensor-parallel 1`` on cuda:0, then ``--tensor-parallel 2``)
   over its Unix socket: decode ms/token at 1 session, TTFT of a 2048-token prompt, tokens/s at 16.
3. ``generate`` on cuda:0 (transformers), for the ratios.

    python scripts/bench_tp.py [--model random:llama-3-8b] [--tokens 64] [--out bench/tp_llama3_8b_2gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_gpu import concurrent_tps, pct, reference, request, stop_all, stream_times  # noqa: E402

DEVICE = os.environ.get("SWARMD_BENCH_DEVICE", "cuda:0")  # "cpu": a smoke test of this script (Gloo ranks)
TTFT_TOKENS = int(os.environ.get("SWARMD_BENCH_TTFT", "2048"))  # smaller for a smoke test's tiny context


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def greedy(stage, prompt: list[int], n: int):  # type: ignore[no-untyped-def]
    """Token ids, per-step logits margins (top1 - top2) and decode ms/token of one session."""
    import torch

    from swarmd.engine.step_plan import Row

    pool = stage.new_pool(-(-(len(prompt) + n + 1) // 16))
    cache = pool.allocate(len(prompt) + n + 1)
    logits = stage.forward_batch([Row(torch.tensor(prompt), 0, cache)])[0]
    toks, margins, times = [], [], []
    pos = len(prompt)
    for _ in range(n):
        top = torch.topk(logits, 2)
        toks.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        sync()
        t = time.perf_counter()
        logits = stage.forward_batch([Row(torch.tensor([toks[-1]]), pos, cache)])[0]
        sync()
        times.append(1000 * (time.perf_counter() - t))
        pos += 1
    pool.release(cache)
    return toks, margins, statistics.median(times[3:])


def batched_tps(stage, vocab: int, sessions: int, n: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    from swarmd.engine.step_plan import Row

    gen = torch.Generator().manual_seed(7)
    pool = stage.new_pool(sessions * -(-(128 + n + 1) // 16))
    caches = [pool.allocate(128 + n + 1) for _ in range(sessions)]
    stage.forward_batch([Row(torch.randint(0, vocab, (128,), generator=gen), 0, c, logits=False) for c in caches])
    tok = [torch.randint(0, vocab, (1,), generator=gen) for _ in caches]
    sync()
    t = time.perf_counter()
    for i in range(n):
        outs = stage.forward_batch([Row(x, 128 + i, c) for x, c in zip(tok, caches, strict=True)])
        tok = [o.argmax().view(1).cpu() for o in outs]
    sync()
    for c in caches:
        pool.release(c)
    return sessions * n / (time.perf_counter() - t)


def engine_level(model: str, tokens: int, prompts: int) -> dict[str, object]:
    import torch

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_meta, load_stage
    from swarmd.types import LayerSpan

    model_cfg = ModelConfig(source=model, cache_dir=Path(tempfile.mkdtemp(prefix="swtp-")))
    loaded = load_meta(model_cfg, EngineConfig(device=DEVICE))
    span = LayerSpan(0, loaded.num_layers, loaded.num_layers)
    vocab = int(loaded.config.vocab_size)
    out: dict[str, object] = {}
    runs: dict[int, list[tuple[list[int], list[float], float]]] = {}
    rng = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(0, vocab, (64,), generator=rng).tolist() for _ in range(prompts)]
    for tp in (1, 2):
        dtype = "bfloat16" if DEVICE != "cpu" else "float32"
        stage = load_stage(loaded, model_cfg, EngineConfig(device=DEVICE, dtype=dtype, tensor_parallel=tp), span)
        greedy(stage, prompt_ids[0], 8)  # warm-up
        runs[tp] = [greedy(stage, p, tokens) for p in prompt_ids]
        out[f"tp{tp}_decode_ms"] = statistics.median(r[2] for r in runs[tp])
        out[f"tp{tp}_tps_16"] = batched_tps(stage, vocab, 16, tokens)
        if tp == 2:
            stage.close()
        del stage
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    same, diverged = 0, []
    for (a, margins, _), (b, margins2, _) in zip(runs[1], runs[2], strict=True):
        if a == b:
            same += 1
            continue
        i = next(j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        diverged.append({"step": i, "tp1_margin": round(margins[i], 4), "tp2_margin": round(margins2[i], 4)})
    out.update(identical=same, prompts=prompts, divergences=diverged,
               min_margin_tp1=round(min(m for r in runs[1] for m in r[1]), 4))
    return out


def daemon_level(model: str, tp: int, tokens: int, vocab: int) -> dict[str, object]:
    import random

    from swarmd.keys import generate_key

    root = Path(tempfile.mkdtemp(prefix="swtpd-", dir="/tmp"))
    key = root / "swarm.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    sock = str(root / "n.sock")
    proc = subprocess.Popen([sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", model, "--device", DEVICE,
                             "--tensor-parallel", str(tp), "--layers", "auto", "--listen", "127.0.0.1:0",
                             "--node-id", f"tp{tp}", "--socket", sock, "--key-file", str(key), "--no-mdns",
                             "--kv-budget", "16GiB"],
                            stdout=open(root / "log", "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    rng = random.Random(0)
    out: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 400
        while True:
            try:
                if request(sock, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "log").read_text()[-3000:])
            time.sleep(0.5)
        stream_times(sock, [rng.randrange(vocab) for _ in range(16)], 4)
        out["ttft_2048_ms"] = 1000 * min(
            (lambda s: s[1] - s[0])(stream_times(sock, [rng.randrange(vocab) for _ in range(TTFT_TOKENS)], 1))
            for _ in range(3))
        gaps: list[float] = []
        for _ in range(3):
            stamps = stream_times(sock, [rng.randrange(vocab) for _ in range(128)], tokens + 1)
            gaps += [1000 * (b - a) for a, b in zip(stamps[2:], stamps[3:], strict=False)]
        out["decode_ms"] = statistics.median(gaps)
        out["decode_p99_ms"] = pct(gaps, 0.99)
        out["tps_16"] = concurrent_tps(sock, 16, tokens, vocab, rng)
    finally:
        stop_all([proc])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "tp_llama3_8b_2gpu"))
    args = ap.parse_args()
    import torch

    from swarmd.engine.sources import RANDOM_PRESETS

    preset = args.model.removeprefix("random:")
    vocab = int(RANDOM_PRESETS[preset]["vocab_size"])
    res: dict[str, object] = {"model": args.model,
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                              "gpus": torch.cuda.device_count(), "tokens": args.tokens}
    out = Path(args.out)

    def save() -> None:
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    res["engine"] = engine_level(args.model, args.tokens, args.prompts)
    save()
    res["generate"] = reference(preset, args.tokens) if DEVICE != "cpu" else {"decode_ms": 1.0}
    save()
    for tp in (1, 2):
        try:
            res[f"daemon_tp{tp}"] = daemon_level(args.model, tp, args.tokens, vocab)
        except Exception as exc:  # noqa: BLE001 - reported; the other rows are kept
            res[f"daemon_tp{tp}"] = {"error": str(exc)[-2000:]}
        save()
    e, g = res["engine"], res["generate"]
    d1, d2 = res["daemon_tp1"], res["daemon_tp2"]

    def f(x: object) -> str:
        return f"{x:.2f}" if isinstance(x, float) else "-"

    lines = [f"# Tensor parallelism inside one node ({args.model}, bf16, {res['gpus']} × {res['gpu']})", "",
             f"`python scripts/bench_tp.py {' '.join(sys.argv[1:])}`: every number from the same run.", "",
             "| setup | decode ms/token @1 | vs TP=1 | vs generate | tok/s @16 | TTFT 2048 ms |",
             "|---|---|---|---|---|---|",
             f"| generate (1 GPU) | {f(g.get('decode_ms'))} | - | 1.00 | {f(g.get('tps_16'))} | "  # type: ignore[union-attr]
             f"{f(g.get('ttft_2048_ms'))} |"]  # type: ignore[union-attr]
    for name, r in (("swarmd 1 node, TP=1 (cuda:0)", d1), ("swarmd 1 node, TP=2 (cuda:0+1)", d2)):
        dm = r.get("decode_ms")  # type: ignore[union-attr]
        base = d1.get("decode_ms")  # type: ignore[union-attr]
        vs1 = dm / base if isinstance(dm, float) and isinstance(base, float) else None
        vsg = dm / g["decode_ms"] if isinstance(dm, float) else None  # type: ignore[index]
        lines.append(f"| {name} | {f(dm)} | {f(vs1)} | {f(vsg)} | {f(r.get('tps_16'))} | "  # type: ignore[union-attr]
                     f"{f(r.get('ttft_2048_ms'))} |")  # type: ignore[union-attr]
    for tp in (1, 2):
        lines.append(f"| engine only, TP={tp} | {f(e[f'tp{tp}_decode_ms'])} | "  # type: ignore[index]
                     f"{f(e[f'tp{tp}_decode_ms'] / e['tp1_decode_ms'])} | - | {f(e[f'tp{tp}_tps_16'])} | - |")  # type: ignore[index,operator]
    lines += ["", f"Greedy tokens, TP=2 vs TP=1 (engine, {e['prompts']} prompts × {args.tokens} tokens): "  # type: ignore[index]
              f"{e['identical']}/{e['prompts']} identical. First divergences (step, TP=1 top-1 − top-2 logit "  # type: ignore[index]
              f"margin there, TP=2's): {e['divergences'] or 'none'}; smallest TP=1 margin seen: "  # type: ignore[index]
              f"{e['min_margin_tp1']}."]  # type: ignore[index]
    for name, r in (("TP=1", d1), ("TP=2", d2)):
        if "error" in r:  # type: ignore[operator]
            lines.append(f"\nDaemon {name} failed: {r['error'][-500:]}")  # type: ignore[index]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
