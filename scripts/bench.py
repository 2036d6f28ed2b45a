#!/usr/bin/env python3
"""One command for the [5/8] benchmarks: swarm vs single-process transformers ``generate``, same model,
same machine, one run. Writes bench/NAME.json and bench/NAME.md.

CPU suite (default; the embedded SmolLM2, fp32): ``generate`` and rings of 1, 2 and 4 daemons on loopback:
  * decode ms/token p50/p99 at one session, TTFT for 128- and 512-token prompts;
  * aggregate tokens/s at 1, 4, 16 and 64 concurrent sessions (``generate``: one batch of that size);
  * peak RSS of each daemon (VmHWM) and of the ``generate`` process;
  * batching correctness: 8 sessions run at once give exactly the text each gives alone.
GPU suite (``--suite gpu``): scripts/bench_gpu.py (Llama-3-8B shape, random bf16 weights, one daemon per GPU).

    python scripts/bench.py [--suite cpu|gpu] [--rings 1,2,4] [--out bench/cpu_smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CONCURRENCY = (1, 4, 16, 64)


def vm_hwm_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generate_throughput(ref, prompts: list[list[int]], tokens: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    x = torch.tensor(prompts)
    with torch.inference_mode():
        t = time.perf_counter()
        ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, min_new_tokens=tokens,
                     do_sample=False, pad_token_id=0)
        return len(prompts) * tokens / (time.perf_counter() - t)


def complete(sock: Path, prompt: list[int], tokens: int) -> tuple[str, int]:
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=600) as c:
        r = c.post("http://x/v1/completions", json={"prompt": prompt, "max_tokens": tokens, "temperature": 0})
        r.raise_for_status()
        body = r.json()
    return str(body["choices"][0]["text"]), int(body["usage"]["completion_tokens"])


def at_once(sock: Path, prompts: list[list[int]], tokens: int) -> tuple[list[str], float]:
    """Every prompt as its own concurrent request: (texts, aggregate generated tokens per second)."""
    texts: list[str] = [""] * len(prompts)
    counts = [0] * len(prompts)

    def one(i: int) -> None:
        texts[i], counts[i] = complete(sock, prompts[i], tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return texts, sum(counts) / (time.perf_counter() - t)


def cpu_suite(args: argparse.Namespace) -> dict[str, object]:
    from bench_ring import generate_timings, latency_row, load_reference, ring_timings, spans
    from cluster import Cluster

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_meta

    cache = Path(args.cache)
    meta = load_meta(ModelConfig(source=args.model, cache_dir=cache), EngineConfig())
    text = "Explain how a pipeline of computers can run one language model together, step by step. " * 60
    ids = meta.tokenizer(text)["input_ids"]
    decode_prompt = ids[:32]
    # Distinct prompts of one length (windows into a long text), so generate needs no padding.
    batch_prompts = [ids[7 * i: 7 * i + 48] for i in range(max(CONCURRENCY))]
    rows: dict[str, dict[str, float]] = {}

    ref = load_reference(args.model, cache)
    row = latency_row(lambda p, n, m=ref: generate_timings(m, p, n), decode_prompt, ids, args.tokens, args.runs)
    for b in CONCURRENCY:
        row[f"tps_{b}"] = generate_throughput(ref, batch_prompts[:b], args.batch_tokens)
    row["peak_rss_mb"] = vm_hwm_mb()
    rows["generate"] = row
    print("generate", row, flush=True)
    del ref

    agreement: dict[str, str] = {}
    for n in args.rings:
        root = Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
        # One machine running n daemons splits its cores among them (torch's default would give every
        # daemon all the cores: n times oversubscribed).
        threads = args.threads or max(1, (os.cpu_count() or 1) // n)
        cluster = Cluster(root, args.model, spans(meta.num_layers, n), cache, threads=threads).start(timeout=900)
        try:
            sock = cluster.daemons[0].sock
            ring_timings(sock, decode_prompt, 8)  # warm-up
            row = latency_row(lambda p, k, s=sock: ring_timings(s, p, k), decode_prompt, ids, args.tokens, args.runs)
            for b in CONCURRENCY:
                row[f"tps_{b}"] = at_once(sock, batch_prompts[:b], args.batch_tokens)[1]
            alone = [complete(sock, p, args.batch_tokens)[0] for p in batch_prompts[:8]]
            together = at_once(sock, batch_prompts[:8], args.batch_tokens)[0]
            agreement[f"ring{n}"] = f"{sum(a == b for a, b in zip(alone, together, strict=True))}/8"
            rss = [vm_hwm_mb(d.proc.pid) for d in cluster.daemons if d.proc is not None]
            row["peak_rss_mb"] = max(rss)
            row["peak_rss_mb_per_node"] = rss  # type: ignore[assignment]
            row["threads_per_daemon"] = threads
            rows[f"ring{n}"] = row
            print(f"ring{n}", row, "batched == alone:", agreement[f"ring{n}"], flush=True)
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "batched_equals_alone": agreement}


def cpu_table(res: dict[str, object], args: argparse.Namespace) -> list[str]:
    rows: dict[str, dict[str, float]] = res["rows"]  # type: ignore[assignment]
    gen = rows["generate"]
    lines = [f"# Swarm vs single-process generate ({args.model}, CPU fp32, {os.cpu_count()} cores)", "",
             "`python scripts/bench.py` — every row measured in the same run on the same machine. Ratios are "
             "against `generate` (decode and TTFT: lower is better; tokens/s: higher is better).", "",
             "| setup | torch threads | decode p50 ms | vs gen | p99 ms | TTFT 128 ms | vs gen | TTFT 512 ms | vs gen "
             "| peak RSS/node MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        threads = r.get("threads_per_daemon", os.cpu_count())
        lines.append(f"| {name} | {threads} | {r['decode_p50_ms']:.2f} | "
                     f"{r['decode_p50_ms'] / gen['decode_p50_ms']:.3f}x | "
                     f"{r['decode_p99_ms']:.2f} | {r['ttft_128_ms']:.1f} | {r['ttft_128_ms'] / gen['ttft_128_ms']:.2f}x"
                     f" | {r['ttft_512_ms']:.1f} | {r['ttft_512_ms'] / gen['ttft_512_ms']:.2f}x | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", f"Aggregate generated tokens/s ({args.batch_tokens} greedy tokens per session, 48-token prompts; "
              "`generate`: one batch of that size):", "",
              "| setup | " + " | ".join(f"@{b}" for b in CONCURRENCY) + " | " +
              " | ".join(f"@{b} vs gen" for b in CONCURRENCY) + " |",
              "|---|" + "---|" * (2 * len(CONCURRENCY))]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[f'tps_{b}']:.0f}" for b in CONCURRENCY) + " | " +
                     " | ".join(f"{r[f'tps_{b}'] / gen[f'tps_{b}']:.2f}x" for b in CONCURRENCY) + " |")
    agree = res["batched_equals_alone"]
    lines += ["", "Batching correctness (8 sessions at once vs each alone, greedy, exact text): " +
              ", ".join(f"{k} {v}" for k, v in agree.items()) + "."]  # type: ignore[union-attr]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per decode-latency run")
    ap.add_argument("--batch-tokens", type=int, default=32, help="tokens per session in the throughput runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rings", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per daemon (0: the machine's cores divided among the ring's daemons)")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "swarmd"))
    ap.add_argument("--out", default=None)
    args, rest = ap.parse_known_args()
    if args.suite == "gpu":
        import bench_gpu

        sys.argv = [sys.argv[0], *rest] + (["--out", args.out] if args.out else [])
        bench_gpu.main()
        return
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    res = cpu_suite(args)
    out = Path(args.out or REPO / "bench" / "cpu_smollm2")
    out.parent.mkdir(exist_ok=True)
    res.update({"model": args.model, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                                 "python": platform.python_version()},
                "bench_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = cpu_table(res, args)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
