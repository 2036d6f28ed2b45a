#!/usr/bin/env python3
"""Failover cost on loopback, in one run: a greedy generation through a ring of 4 daemons (2 replicas of
each span) without failure, then the same generation with ``kill -9`` of the last stage at mid-stream.

Reports the failure-free time, the time with the kill, their ratio, and the pause from the kill to the
next streamed token (the entry detects the broken link, opens a session on the replica and replays the
history as a prefill). Target (issue [4/8]): pause <= 200 ms plus the replay prefill; total <= 1.2x.

    python scripts/bench_failover.py [--tokens 400] [--repeats 3] [--model random:tiny-llama | PATH]

Writes bench/failover.json and bench/failover.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from cluster import Cluster, Daemon  # noqa: E402
from model_factory import make_tiny_model  # noqa: E402


def stream(sock: Path, ids: list[int], n: int, kill: Daemon | None, kill_at: int) -> dict[str, Any]:
    body = {"prompt": ids, "max_tokens": n, "temperature": 0, "stream": True}
    pieces, stamps = [], []
    killed_at = None
    started = time.monotonic()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=300) as c:
        with c.stream("POST", "http://x/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk)
                for choice in chunk["choices"]:
                    pieces.append(choice["text"])
                    stamps.append(time.monotonic())
                if kill is not None and killed_at is None and len(stamps) >= kill_at:
                    kill.signal(signal.SIGKILL)
                    killed_at = time.monotonic()
    out: dict[str, Any] = {"text": "".join(pieces), "seconds": time.monotonic() - started}
    if killed_at is not None:
        out["pause_s"] = next(t for t in stamps if t > killed_at) - killed_at
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        out["normal_gap_s"] = statistics.median(gaps)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench")
    args = p.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="swbf-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "m8", "llama", layers=8, context=2048, never_eos=True)
        ids = AutoTokenizer.from_pretrained(model)("The quick brown fox jumps over the lazy dog.")["input_ids"]
        cache = Path(os.environ.get("SWARMD_CACHE_DIR", REPO / ".cache" / "swarmd"))
        cluster = Cluster(root, str(model), ["0:4", "0:4", "4:8", "4:8"], cache, extra=["--gossip", "local"])
        cluster.start()
        rows = []
        try:
            entry = cluster.daemons[0]
            for _ in range(args.repeats):
                cluster.wait_healthy(60)
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=5) as c:
                    while c.get("http://x/v1/swarm/status").json()["layer_replicas"]["min"] < 2:
                        time.sleep(0.1)  # the node killed last time is back as a standby
                    ring = c.get("http://x/v1/swarm/status").json()["ring"]
                victim = next(d for d in cluster.daemons if d.name == ring[-1])
                clean = stream(entry.sock, ids, args.tokens, None, 0)
                failed = stream(entry.sock, ids, args.tokens, victim, args.tokens // 2)
                assert failed["text"] == clean["text"], "the failover changed the output"
                rows.append({"clean_s": round(clean["seconds"], 3), "with_kill_s": round(failed["seconds"], 3),
                             "ratio": round(failed["seconds"] / clean["seconds"], 3),
                             "pause_ms": round(failed["pause_s"] * 1000, 1),
                             "median_gap_ms": round(failed["normal_gap_s"] * 1000, 2)})
                print(json.dumps(rows[-1]), flush=True)
                assert victim.proc is not None
                victim.proc.wait(10)
                victim.start(dict(os.environ, SWARMD_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1"))
        finally:
            cluster.stop()
    meta = {"tokens": args.tokens, "kill_at": args.tokens // 2, "cpus": os.cpu_count(),
            "python": platform.python_version(), "model": "tiny random llama, 8 layers, fp32, CPU",
            "ring": "4 daemons on loopback, spans 0:4 x2 and 4:8 x2",
            "command": "python scripts/bench_failover.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Failover: kill -9 of a stage at mid-stream", "",
             f"`{meta['command']}` — {meta['ring']}, {meta['model']}, {args.tokens} greedy tokens, kill at "
             f"token {args.tokens // 2}, {meta['cpus']} CPUs. Output with the kill is identical to the clean run.",
             "", "| run | clean (s) | with kill -9 (s) | ratio | pause kill → next token (ms) | median gap (ms) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['clean_s']} | {r['with_kill_s']} | {r['ratio']} | {r['pause_ms']} | "
              f"{r['median_gap_ms']} |" for i, r in enumerate(rows)]
    (args.out / "failover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
