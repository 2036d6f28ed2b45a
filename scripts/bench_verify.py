#!/usr/bin/env python3
"""What output verification costs: aggregate tokens/s of one ring at spot-check rates 0%, 5% and 20%,
next to single-process transformers ``generate`` at the same batch, same model, same machine, one run.

The ring is an entry holding the first half of the layers and two replicas of the second half (the
shadow of a checked session is the other replica). Probation is off, so the rate alone decides which
sessions are checked; the draws are seeded. Every checked session must still give the unchecked text.
Writes bench/verify.json and bench/verify.md.

    python scripts/bench_verify.py [--model smollm2-135m-instruct] [--sessions 16] [--tokens 32] [--rates 0,0.05,0.2]
    python scripts/bench_verify.py --device cuda --model random:llama-3-8b --out bench/verify_gpu   # one GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def status(sock: Path) -> dict:  # type: ignore[type-arg]
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as c:
        return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]


def main() -> None:
    from bench_ring import load_reference
    from cluster import Cluster
    from helpers import shared_cache_dir

    from bench import at_once, generate_throughput
    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_meta

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="batches of --sessions per rate (tok/s is their mean)")
    ap.add_argument("--rates", default="0,0.05,0.2")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: every daemon on the one GPU, bf16")
    ap.add_argument("--out", default=str(REPO / "bench" / "verify"))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    cache = shared_cache_dir()
    meta = load_meta(ModelConfig(source=args.model, cache_dir=cache), EngineConfig())
    half = meta.num_layers // 2
    n_prompts = args.sessions * args.rounds
    if args.device == "cpu":
        text = "Explain how a pipeline of computers can run one language model together, step by step. " * 40
        ids = meta.tokenizer(text)["input_ids"]
        prompts = [ids[5 * i: 5 * i + 40] for i in range(n_prompts)]
        ref = load_reference(args.model, cache)
        gen_tps = generate_throughput(ref, prompts[: args.sessions], args.tokens)
        del ref
        device_args: list[str] = []
    else:
        import random

        rng = random.Random(0)
        prompts = [[rng.randrange(int(meta.config.vocab_size)) for _ in range(40)] for _ in range(n_prompts)]
        gen_tps = gpu_generate_throughput(args.model, prompts[: args.sessions], args.tokens)
        device_args = ["--device", args.device, "--kv-budget", "8GiB", "--seconds-per-layer", "0.0005"]
    print(f"generate batch {args.sessions}: {gen_tps:.1f} tok/s", flush=True)

    rows: list[dict[str, object]] = []
    baseline_texts: list[str] | None = None
    for rate in rates:
        root = Path(tempfile.mkdtemp(prefix="swv-", dir="/tmp"))
        extra = ["--spot-check", str(rate), "--probation-steps", "0", "--spot-check-seed", "1", *device_args]
        cluster = Cluster(root, args.model, [f"0:{half}", f"{half}:{meta.num_layers}", f"{half}:{meta.num_layers}"],
                          cache, extra=extra, threads=1).start(timeout=900)
        try:
            sock = cluster.daemons[0].sock
            at_once(sock, prompts[:2], 4)  # warm-up
            texts: list[str] = []
            tps = []
            for r in range(args.rounds):
                out, t = at_once(sock, prompts[r * args.sessions: (r + 1) * args.sessions], args.tokens)
                texts += out
                tps.append(t)
            v = status(sock)["verification"]
            same = "" if baseline_texts is None else \
                f"{sum(a == b for a, b in zip(texts, baseline_texts, strict=True))}/{len(texts)}"
            baseline_texts = baseline_texts or texts
            row = {"rate": rate, "tok_s": sum(tps) / len(tps), "runs_tok_s": tps,
                   "checked_sessions": v.get("sessions", 0), "checked_steps": v.get("steps", 0),
                   "mismatches": v.get("mismatches", 0),
                   "same_text_as_rate_0": same}
            rows.append(row)
            print(row, flush=True)
            partial = Path(args.out).with_suffix(".partial.json")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"generate_tok_s": gen_tps, "rows": rows}, indent=2) + "\n")
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    base = float(rows[0]["tok_s"])  # type: ignore[arg-type]
    for row in rows:
        row["vs_rate_0"] = float(row["tok_s"]) / base  # type: ignore[arg-type]
        row["vs_generate"] = float(row["tok_s"]) / gen_tps  # type: ignore[arg-type]
    machine = f"{platform.machine()}, {os.cpu_count()} cpus"
    if args.device != "cpu":
        import torch

        machine += f", {torch.cuda.get_device_name(0)}, all daemons on one GPU, bfloat16"
    res = {"model": args.model, "machine": machine, "sessions": args.sessions,
           "tokens": args.tokens, "rounds": args.rounds, "generate_tok_s": gen_tps, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# Output verification cost ({args.model}, {res['machine']})", "",
             f"Command: `python scripts/bench_verify.py --sessions {args.sessions} --tokens {args.tokens} "
             f"--rounds {args.rounds} --rates {args.rates}`. Ring: entry [0, {half}) + two replicas of "
             f"[{half}, {meta.num_layers}), one torch thread each; {args.sessions} concurrent sessions of "
             f"{args.tokens} tokens, {args.rounds} rounds. `generate` (batch {args.sessions}): {gen_tps:.1f} tok/s.",
             "", "| spot-check rate | tok/s | vs rate 0 | vs generate | checked sessions | checked steps | "
             "mismatches | same text as rate 0 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['rate']:.0%} | {row['tok_s']:.1f} | {row['vs_rate_0']:.3f} | {row['vs_generate']:.3f} | "
                     f"{row['checked_sessions']} | {row['checked_steps']} | {row['mismatches']} | "
                     f"{row['same_text_as_rate_0'] or '-'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print("\n".join(lines))


def gpu_generate_throughput(preset: str, prompts: list[list[int]], tokens: int) -> float:
    """transformers ``generate`` at batch ``len(prompts)`` on cuda:0, bf16, random weights of the preset's shape."""
    import time

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from swarmd.engine.sources import RANDOM_PRESETS

    spec = dict(RANDOM_PRESETS[preset.removeprefix("random:")])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("cuda:0"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    x = torch.tensor(prompts, device="cuda:0")
    with torch.inference_mode():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, min_new_tokens=tokens,
                       do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        tps = len(prompts) * tokens / (time.perf_counter() - t)
    del model
    torch.cuda.empty_cache()
    return tps


if __name__ == "__main__":
    main()
