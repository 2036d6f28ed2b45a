#!/usr/bin/env python3
"""Gossip membership at scale: N gossip-only members (``python -m swarmd.membership.agent``: real
processes, real handshake, encryption and SWIM over loopback TCP, no model), for N = 8, 16, 32, 64.

For each N it reports:
  * form_s: N members started together (one seed): from the last one up until all list all N as alive
    (on a small machine this includes the CPU crush of starting N Python processes at once);
  * converge_s: one more member joins a settled swarm of N - 1: from its start until all N list all N
    as alive (the time a membership change takes to reach everyone);
  * detect_s: from ``kill -9`` of one member until every other member lists it as dead;
  * bytes_per_s_per_node: wire bytes written per second per member in steady state (frames with
    headers, handshakes included), measured after convergence over ``--window`` seconds or one
    anti-entropy period (5 s x N / 8), whichever is longer.
Targets (issue [3/8]): 64 members converge within 2 s, detect a death within 5 s, and bytes per node
grow no faster than O(log N).

    python scripts/bench_gossip.py [--sizes 8 16 32 64] [--gossip lan|local] [--window 10]

Writes bench/gossip.json and bench/gossip.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarmd.keys import generate_key  # noqa: E402


class Agent:
    def __init__(self, i: int, key: Path, seed: str | None, gossip: str, events: queue.Queue[Any]) -> None:
        self.i = i
        self.node_id = f"agent{i:03d}"
        cmd = [sys.executable, "-m", "swarmd.membership.agent", "--node-id", self.node_id, "--key-file", str(key),
               "--gossip", gossip, *(["--seed", seed] if seed else [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.addr: str | None = None
        self.view: dict[str, Any] = {}
        self.bytes_out: list[tuple[float, int]] = []
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue.Queue[Any]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                events.put((self.i, json.loads(line)))
            except json.JSONDecodeError:
                pass


def run_size(n: int, gossip: str, window: float, key: Path, timeout: float = 120.0) -> dict[str, Any]:
    events: queue.Queue[Any] = queue.Queue()
    agents: list[Agent] = []

    def pump(until: float, cond: Any = None) -> bool:
        while time.monotonic() < until:
            try:
                i, ev = events.get(timeout=0.05)
            except queue.Empty:
                if cond is not None and cond():
                    return True
                continue
            a = agents[i]
            if ev["event"] == "ready":
                a.addr = ev["addr"]
                a.view["ready_t"] = ev["t"]
            elif ev["event"] == "view":
                a.view.update(ev)
            elif ev["event"] == "bytes":
                a.bytes_out.append((ev["t"], ev["out"]))
            if cond is not None and cond():
                return True
        return cond() if cond is not None else True

    try:
        agents.append(Agent(0, key, None, gossip, events))
        assert pump(time.monotonic() + 30, lambda: agents[0].addr is not None), "first agent did not start"
        seed = agents[0].addr
        for i in range(1, n - 1):
            agents.append(Agent(i, key, seed, gossip, events))
        assert pump(time.monotonic() + timeout, lambda: all(a.addr for a in agents)), "agents did not start"
        last_up = max(a.view["ready_t"] for a in agents)

        def all_see(k: int) -> bool:
            return all(a.view.get("alive", 0) == k - 1 for a in agents)

        assert pump(time.monotonic() + timeout, lambda: all_see(n - 1)), f"{n - 1} agents did not converge"
        form_s = max(a.view["t"] for a in agents) - last_up
        pump(time.monotonic() + 3.0)  # let the start-up settle
        agents.append(Agent(n - 1, key, agents[-1].addr, gossip, events))  # seeded by the newest member
        assert pump(time.monotonic() + 30, lambda: agents[-1].addr is not None), "the joiner did not start"
        assert pump(time.monotonic() + timeout, lambda: all_see(n)), f"{n} agents did not converge"
        converged_t = time.monotonic()
        converge_s = max(a.view["t"] for a in agents) - agents[-1].view["ready_t"]
        # Steady state, over at least one anti-entropy period (5 s x n / 8), so full-state exchanges count.
        pump(time.monotonic() + max(window, 1.25 * 5.0 * max(1.0, n / 8)))
        rates = []
        for a in agents:
            pts = [(t, b) for t, b in a.bytes_out if t >= converged_t]
            if len(pts) >= 2:
                rates.append((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]))
        victim = agents[n // 2]
        victim.proc.send_signal(signal.SIGKILL)
        killed_t = time.monotonic()
        others = [a for a in agents if a is not victim]

        def detected() -> bool:
            return all(victim.node_id in a.view.get("dead_ids", ()) for a in others)

        ok = pump(killed_t + 60, detected)
        detect_s = (max(a.view["t"] for a in others) - killed_t) if ok else math.inf
        return {"n": n, "form_s": round(form_s, 3), "converge_s": round(converge_s, 3), "detect_s": round(detect_s, 3),
                "bytes_per_s_per_node": round(sum(rates) / max(1, len(rates)), 1),
                "bytes_per_s_per_node_max": round(max(rates, default=0.0), 1)}
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGKILL)
        for a in agents:
            a.proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--gossip", choices=("lan", "local"), default="lan")
    p.add_argument("--window", type=float, default=10.0, help="shortest steady-state window (s)")
    p.add_argument("--out", type=Path, default=ROOT / "bench")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "swarm.key"
        key.write_text(generate_key() + "\n")
        key.chmod(0o600)
        rows = []
        for n in args.sizes:
            row = run_size(n, args.gossip, args.window, key)
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]
    for r in rows:  # bytes per node relative to the smallest swarm, against log2(N) relative to it
        r["bytes_ratio"] = round(r["bytes_per_s_per_node"] / base["bytes_per_s_per_node"], 2)
        r["log_ratio"] = round(math.log2(r["n"]) / math.log2(base["n"]), 2)
    meta = {"gossip": args.gossip, "window_s": args.window, "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "command": "python scripts/bench_gossip.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(exist_ok=True)
    (args.out / "gossip.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Gossip membership at scale", "",
        f"`{meta['command']}` — gossip profile `{args.gossip}`, {meta['cpus']} CPUs, every member a real process "
        "on loopback (handshake, encryption, SWIM), no model.", "",
        "| N | form (s) | converge after a join (s) | detect kill -9 (s) | bytes/s per node (mean) | max | "
        "bytes ratio | log2 N ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['form_s']} | {r['converge_s']} | {r['detect_s']} | "
                     f"{r['bytes_per_s_per_node']} | {r['bytes_per_s_per_node_max']} | {r['bytes_ratio']} | "
                     f"{r['log_ratio']} |")
    lines += ["", "Targets: converge ≤ 2 s and detect ≤ 5 s at N = 64; bytes per node growing no faster than "
              "log N (bytes ratio ≤ log2 N ratio).", "",
              "`form` starts N - 1 processes at once with one seed; on a machine with few cores it mostly measures "
              "the CPU crush of N Python processes starting, handshaking and probing at the same time (probes time "
              "out, members get suspected and refute). `converge after a join` is one member joining a settled "
              "swarm: the time a membership change takes to reach every member."]
    (args.out / "gossip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
