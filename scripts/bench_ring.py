#!/usr/bin/env python3
"""Ring vs single-process transformers ``generate`` on the same model, same machine, one run.

Measures, for rings of 1, 2 and 4 daemons (separate processes on loopback, encrypted links):
  * decode ms/token p50/p99 at one session (inter-token gaps of the SSE stream), vs ``generate``;
  * time to first token for a 128- and a 512-token prompt, vs ``generate``;
  * per-hop overhead: (ring of N - ring of 1) per token / N, on a tiny model where compute is small,
    against a plain uvloop TCP echo round trip measured in the same run.
Writes bench/ring.json and bench/ring.md.

    python scripts/bench_ring.py [--model smollm2-135m-instruct] [--tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


# --- single-process reference -------------------------------------------------------------------


def load_reference(model: str, cache: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    from swarmd.engine.loader import meta_dir
    from swarmd.engine.sources import resolve_source

    src = resolve_source(model)
    if src.kind == "gguf":
        assert src.path is not None
        ref = AutoModelForCausalLM.from_pretrained(str(src.path.parent), gguf_file=src.path.name, dtype=torch.float32)
    else:
        ref = AutoModelForCausalLM.from_pretrained(str(meta_dir(src, cache)), dtype=torch.float32)
    return ref.eval()


def generate_timings(ref, prompt_ids: list[int], n: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """(time to first token, inter-token gaps) of ``generate`` with greedy decoding."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Clock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    t0 = time.perf_counter()
    with torch.inference_mode():
        ref.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                     stopping_criteria=StoppingCriteriaList([Clock()]))
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def latency_row(timings: Callable[[list[int], int], tuple[float, list[float]]], decode_prompt: list[int],
                ids: list[int], tokens: int, runs: int) -> dict[str, float]:
    """Decode ms/token p50/p99 (``runs`` generations of ``tokens``) and the best TTFT of 128 and 512 tokens."""
    gaps: list[float] = []
    for _ in range(runs):
        gaps += timings(decode_prompt, tokens)[1]
    row = {"decode_p50_ms": pct(gaps, 0.5) * 1e3, "decode_p99_ms": pct(gaps, 0.99) * 1e3}
    for plen in (128, 512):
        row[f"ttft_{plen}_ms"] = min(timings(ids[:plen], 1)[0] for _ in range(runs)) * 1e3
    return row


# --- the ring ---------------------------------------------------------------------------------------


def ring_timings(sock: Path, prompt_ids: list[int], n: int) -> tuple[float, list[float]]:
    import httpx

    body = {"prompt": prompt_ids, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True}
    body.pop("ignore_eos")
    stamps: list[float] = []
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=600) as c:
        t0 = time.perf_counter()
        with c.stream("POST", "http://x/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"finish_reason": null' in line:
                    stamps.append(time.perf_counter())
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def spans(num_layers: int, n: int) -> list[str]:
    from cluster import even_spans

    return even_spans(num_layers, n)


# --- echo round trip ----------------------------------------------------------------------------------

ECHO_SERVER = r"""
import asyncio, sys, uvloop
async def handle(r, w):
    try:
        while True:
            data = await r.readexactly(68)
            w.write(data)
    except Exception:
        pass
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
uvloop.run(main())
"""


def echo_rtt_us(n: int = 3000) -> float:
    import uvloop

    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]

        async def client() -> list[float]:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            out = []
            msg = b"\x00\x00\x00\x40" + b"x" * 64
            for _ in range(n):
                t = time.perf_counter()
                w.write(msg)
                await r.readexactly(68)
                out.append(time.perf_counter() - t)
            w.close()
            return out

        return statistics.median(uvloop.run(client())[200:]) * 1e6
    finally:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hop-model", default="random:tiny-llama", help="small model for the per-hop overhead")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rings", default="1,2,4")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per daemon and for generate (0: default)")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "swarmd"))
    args = ap.parse_args()
    from cluster import Cluster

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_meta

    cache = Path(args.cache)
    meta = load_meta(ModelConfig(source=args.model, cache_dir=cache), EngineConfig())
    num_layers = meta.num_layers
    prompt = "Explain how a pipeline of computers can run one language model together. " * 40
    ids = meta.tokenizer(prompt)["input_ids"] if meta.tokenizer is not None else list(range(1, 600))
    decode_prompt = ids[:32]
    results: dict[str, dict[str, float]] = {}

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    ref = load_reference(args.model, cache)
    row = latency_row(lambda p, n, m=ref: generate_timings(m, p, n), decode_prompt, ids, args.tokens, args.runs)
    results["generate"] = row
    del ref
    print("generate", row, flush=True)

    rings = [int(x) for x in args.rings.split(",")]
    for n in rings:
        root = Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
        cluster = Cluster(root, args.model, spans(num_layers, n), cache, threads=args.threads).start(timeout=900)
        try:
            sock = cluster.daemons[0].sock
            ring_timings(sock, decode_prompt, 8)  # warm-up
            row = latency_row(lambda p, k, s=sock: ring_timings(s, p, k), decode_prompt, ids, args.tokens, args.runs)
            results[f"ring{n}"] = row
            print(f"ring{n}", row, flush=True)
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)

    # Per-hop overhead on a model whose compute is tiny, against an echo round trip.
    hop_meta = load_meta(ModelConfig(source=args.hop_model, cache_dir=cache), EngineConfig())
    hop_layers = hop_meta.num_layers
    hop: dict[int, float] = {}
    for n in (1, hop_layers):
        root = Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
        cluster = Cluster(root, args.hop_model, spans(hop_layers, n), cache, threads=args.threads)
        cluster.start(timeout=600)
        try:
            ring_timings(cluster.daemons[0].sock, [1, 2, 3, 4], 16)
            gaps = []
            for _ in range(args.runs):
                gaps += ring_timings(cluster.daemons[0].sock, [1, 2, 3, 4], 128)[1]
            hop[n] = pct(gaps, 0.5) * 1e6
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    echo = echo_rtt_us()
    per_hop = (hop[hop_layers] - hop[1]) / hop_layers
    results["hops"] = {"ring1_token_us": hop[1], f"ring{hop_layers}_token_us": hop[hop_layers],
                       "per_hop_overhead_us": per_hop, "echo_rtt_us": echo, "per_hop_vs_echo": per_hop / echo}

    gen = results["generate"]
    out = {"model": args.model, "tokens": args.tokens, "runs": args.runs, "machine": {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results}
    bench = REPO / "bench"
    bench.mkdir(exist_ok=True)
    (bench / "ring.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Ring vs single-process generate ({args.model}, CPU, {os.cpu_count()} cores)", "",
             "`python scripts/bench_ring.py` — every row measured in the same run on the same machine.", "",
             "| setup | decode p50 ms | p50 vs generate | decode p99 ms | TTFT 128 ms | vs gen | TTFT 512 ms"
             " | vs gen |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ["generate", *[f"ring{n}" for n in rings]]:
        r = results[name]
        lines.append(f"| {name} | {r['decode_p50_ms']:.2f} | {r['decode_p50_ms'] / gen['decode_p50_ms']:.3f}x | "
                     f"{r['decode_p99_ms']:.2f} | {r['ttft_128_ms']:.1f} | "
                     f"{r['ttft_128_ms'] / gen['ttft_128_ms']:.2f}x | "
                     f"{r['ttft_512_ms']:.1f} | {r['ttft_512_ms'] / gen['ttft_512_ms']:.2f}x |")
    h = results["hops"]
    lines += ["", f"Per-hop overhead ({args.hop_model}, rings of 1 and {hop_layers}): "
              f"{h['per_hop_overhead_us']:.0f} µs per hop vs a uvloop TCP echo round trip of {h['echo_rtt_us']:.0f} µs "
              f"({h['per_hop_vs_echo']:.2f}x)."]
    (bench / "ring.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
