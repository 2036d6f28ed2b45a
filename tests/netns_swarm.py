"""One swarmd daemon per lab namespace (real multicast mDNS, no seed peers), for multi-host tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from helpers import shared_cache_dir
from netns_lab import Lab


def status(sock: Path, timeout: float = 5) -> dict:  # type: ignore[type-arg]
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=timeout) as c:
        return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]


def try_status(sock: Path) -> dict | None:  # type: ignore[type-arg]
    try:
        return status(sock)
    except (httpx.HTTPError, OSError, json.JSONDecodeError):
        return None


@dataclass
class Outcome:
    """One completion request as the client saw it."""

    entry: int
    started: float
    seconds: float
    status: int
    text: str = ""
    retry_after: str | None = None
    error: str = ""


def complete(sock: Path, ids: list[int], n: int, entry: int = -1, timeout: float = 120) -> Outcome:
    """POST a greedy completion; any failure (HTTP error, refused socket) is an outcome, not an exception."""
    started = time.monotonic()
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=timeout) as c:
            r = c.post("http://x/v1/completions", json={"prompt": ids, "max_tokens": n, "temperature": 0})
        body = r.json()
        text = str(body["choices"][0]["text"]) if r.status_code == 200 else ""
        return Outcome(entry, started, time.monotonic() - started, r.status_code, text, r.headers.get("Retry-After"),
                       "" if r.status_code == 200 else json.dumps(body)[:300])
    except (httpx.HTTPError, OSError, json.JSONDecodeError, KeyError) as exc:
        return Outcome(entry, started, time.monotonic() - started, 0, error=f"{type(exc).__name__}: {exc}")


@dataclass
class NetSwarm:
    """``spans[i]`` is daemon i's ``--layers`` (``auto``, ``START:END`` or ``none``)."""

    lab: Lab
    root: Path
    model: Path
    key: Path
    spans: list[str]
    extra: list[str] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def sock(self, i: int) -> Path:
        return self.root / f"n{i}.sock"

    def log(self, i: int) -> Path:
        return self.root / f"n{i}.log"

    def launch(self, i: int, *extra: str) -> None:
        env = dict(os.environ, SWARMD_CACHE_DIR=str(shared_cache_dir()), HF_HUB_OFFLINE="1")
        args = self.lab.exec_args(i, sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", str(self.model),
                                  "--listen", "0.0.0.0:7070", "--node-id", f"ns{i}", "--socket", str(self.sock(i)),
                                  "--key-file", str(self.key), "--threads", "1", "--layers", self.spans[i],
                                  *self.extra, *extra)
        with self.log(i).open("ab") as out:
            self.procs[i] = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def start(self) -> NetSwarm:
        for i in range(len(self.spans)):
            self.launch(i)
        return self

    def logs_tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- ns{i}\n{self.log(i).read_text()[-chars:]}" for i in self.procs if self.log(i).exists())

    def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 180, running: bool = True) -> float:
        """Poll ``cond`` until true; returns the seconds it took. Fails when a daemon exits meanwhile."""
        started = time.monotonic()
        while not cond():
            if running:
                for i, p in self.procs.items():
                    assert p.poll() is None, f"ns{i} exited while waiting for {what}\n{self.logs_tail()}"
            assert time.monotonic() - started < timeout, f"timed out waiting for {what}\n{self.logs_tail()}"
            time.sleep(0.2)
        return time.monotonic() - started

    def one_view(self, members: list[int] | None = None) -> bool:
        """Every listed daemon serves, sees every other listed one alive (and nobody else alive) and
        reports the same layer coverage."""
        members = list(self.procs) if members is None else members
        names = {f"ns{i}" for i in members}
        coverage = []
        for i in members:
            d = try_status(self.sock(i))
            if d is None or d["state"] != "serving":
                return False
            if {p["node_id"] for p in d["peers"] if p["state"] == "alive"} != names - {f"ns{i}"}:
                return False
            coverage.append(d["coverage"])
        return all(c == coverage[0] for c in coverage)  # and everyone's metadata has arrived everywhere

    def declared_dead(self) -> list[str]:
        """``observer: member`` for every death verdict in the logs."""
        return [f"ns{i}: {line.split('member ')[1].split(' is dead')[0]}" for i in self.procs
                for line in self.log(i).read_text().splitlines() if " is dead" in line and "member " in line]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
