#!/usr/bin/env python3
"""GPU: two dimensions of splitting on one 4-GPU host, same random-weight bf16 model, one run:
  * 4 nodes × TP=1: a pipeline ring of four daemons, one GPU each;
  * 2 nodes × TP=2: a ring of two daemons, each splitting its span over two GPUs.
TTFT (128- and 2048-token prompts) and aggregate tokens/s at 1, 16 and 64 concurrent sessions, measured
through the first daemon's Unix socket.

    python scripts/bench_tp_ring.py [--model random:llama-3-70b] [--out bench/tp_ring_llama3_70b_4gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_gpu import concurrent_tps, request, stop_all, stream_times  # noqa: E402

CONCURRENCY = (1, 16, 64)
DEVICE = os.environ.get("SWARMD_BENCH_DEVICE")  # "cpu": a smoke test of this script (Gloo ranks)
TTFT_LONG = int(os.environ.get("SWARMD_BENCH_TTFT", "2048"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path, model: str, nodes: int, tp: int, layers: int) -> list[subprocess.Popen[bytes]]:
    from swarmd.keys import generate_key

    key = root / "swarm.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    ports = [free_port() for _ in range(nodes)]
    cuts = [round(i * layers / nodes) for i in range(nodes + 1)]
    procs = []
    for i in range(nodes):
        peers = [x for j, p in enumerate(ports) if j != i for x in ("--peer", f"127.0.0.1:{p}")]
        device = DEVICE or f"cuda:{i * tp}"
        args = [sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", model, "--device", device,
                "--tensor-parallel", str(tp), "--layers", f"{cuts[i]}:{cuts[i + 1]}", "--listen",
                f"127.0.0.1:{ports[i]}", "--node-id", f"n{i}", "--socket", str(root / f"n{i}.sock"), "--key-file",
                str(key), "--no-mdns", "--seconds-per-layer", "0.0005", "--kv-budget", "24GiB",
                "--step-timeout", "300", *peers]
        procs.append(subprocess.Popen(args, stdout=open(root / f"n{i}.log", "wb"), stderr=subprocess.STDOUT,
                                      cwd=REPO))
    deadline = time.monotonic() + 500
    while True:
        try:
            if all(request(str(root / f"n{i}.sock"), "GET", "/health")[0] == 200 for i in range(nodes)):
                time.sleep(2)  # every link up, not only the gossip
                return procs
        except OSError:
            pass
        for i, p in enumerate(procs):
            if p.poll() is not None:
                raise RuntimeError(f"daemon {i} exited:\n{(root / f'n{i}.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("not ready:\n" + (root / "n0.log").read_text()[-3000:])
        time.sleep(1)


def measure(model: str, nodes: int, tp: int, layers: int, vocab: int, tokens: int) -> dict[str, object]:
    import random

    rng = random.Random(0)
    root = Path(tempfile.mkdtemp(prefix="swtr-", dir="/tmp"))
    started = time.monotonic()
    procs = start(root, model, nodes, tp, layers)
    out: dict[str, object] = {"startup_s": time.monotonic() - started}
    sock = str(root / "n0.sock")
    try:
        stream_times(sock, [rng.randrange(vocab) for _ in range(16)], 4)
        for n in (128, TTFT_LONG):
            out[f"ttft_{min(n, 2048)}_ms"] = 1000 * min(
                (lambda s: s[1] - s[0])(stream_times(sock, [rng.randrange(vocab) for _ in range(n)], 1))
                for _ in range(2))
        for b in CONCURRENCY:
            out[f"tps_{b}"] = concurrent_tps(sock, b, tokens, vocab, rng)
    finally:
        stop_all(procs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-70b")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=str(REPO / "bench" / "tp_ring_llama3_70b_4gpu"))
    args = ap.parse_args()
    import torch

    from swarmd.engine.sources import RANDOM_PRESETS

    preset = RANDOM_PRESETS[args.model.removeprefix("random:")]
    layers, vocab = int(preset["num_hidden_layers"]), int(preset["vocab_size"])
    res: dict[str, object] = {"model": args.model,
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                              "gpus": torch.cuda.device_count(), "tokens": args.tokens, "rows": {}}
    rows: dict[str, dict[str, object]] = res["rows"]  # type: ignore[assignment]
    out = Path(args.out)
    for name, nodes, tp in (("4 nodes × TP=1", 4, 1), ("2 nodes × TP=2", 2, 2)):
        try:
            rows[name] = measure(args.model, nodes, tp, layers, vocab, args.tokens)
        except Exception as exc:  # noqa: BLE001 - reported, the other layout kept
            rows[name] = {"error": str(exc)[-2000:]}
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    def f(x: object) -> str:
        return f"{x:.1f}" if isinstance(x, float) else "-"

    lines = [f"# Pipeline × tensor parallelism ({args.model}, bf16, {res['gpus']} × {res['gpu']})", "",
             f"`python scripts/bench_tp_ring.py {' '.join(sys.argv[1:])}`: both layouts in the same run, "
             f"{args.tokens} greedy tokens per session.", "",
             "| layout | TTFT 128 ms | TTFT 2048 ms | tok/s @1 | tok/s @16 | tok/s @64 | start s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f(r.get(k)) for k in ("ttft_128_ms", "ttft_2048_ms", "tps_1",
                                                                       "tps_16", "tps_64", "startup_s")) + " |")
        if "error" in r:
            lines.append(f"\n{name} failed: {str(r['error'])[-600:]}\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
