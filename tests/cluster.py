"""Rings of real swarmd processes on loopback, for multi-node tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarmd.keys import generate_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_key(path: Path) -> Path:
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Daemon:
    name: str
    sock: Path
    addr: str
    log: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "swarmd.cli.swarmd_main", *self.args],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)


@dataclass
class Cluster:
    """``spans``: one ``"START:END"`` (or ``"none"``) per daemon. Every daemon peers with every other."""

    root: Path
    model: str
    spans: list[str]
    cache_dir: Path
    key: Path | None = None
    extra: list[str] = field(default_factory=list)
    mdns: bool = False  # loopback rings never multicast on the host's network
    threads: int = 1  # torch threads per daemon (0: torch's default); 1 keeps test rings from fighting
    daemons: list[Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = write_key(self.root / "swarm.key")
        addrs = [f"127.0.0.1:{free_port()}" for _ in self.spans]
        for i, span in enumerate(self.spans):
            self.daemons.append(self._daemon(i, span, addrs[i], [a for a in addrs if a != addrs[i]], self.extra))

    def _daemon(self, i: int, span: str, addr: str, peers: list[str], extra: list[str]) -> Daemon:
        args = ["--model", self.model, "--layers", span, "--listen", addr, "--node-id", f"node{i}",
                "--socket", str(self.root / f"n{i}.sock"), "--key-file", str(self.key),
                "--threads", str(self.threads),
                "--drain-timeout", "5", *[x for p in peers for x in ("--peer", p)],
                *([] if self.mdns else ["--no-mdns"]), *extra]
        return Daemon(f"node{i}", self.root / f"n{i}.sock", addr, self.root / f"n{i}.log", args)

    def add(self, span: str, extra: list[str] | None = None) -> Daemon:
        """Start one more daemon whose seed peers are the daemons already there (no health wait)."""
        i = len(self.daemons)
        d = self._daemon(i, span, f"127.0.0.1:{free_port()}", [x.addr for x in self.daemons],
                         self.extra if extra is None else extra)
        self.daemons.append(d)
        d.start(dict(os.environ, SWARMD_CACHE_DIR=str(self.cache_dir), HF_HUB_OFFLINE="1"))
        return d

    def start(self, timeout: float = 300.0) -> Cluster:
        env = dict(os.environ, SWARMD_CACHE_DIR=str(self.cache_dir), HF_HUB_OFFLINE="1")
        for d in self.daemons:
            d.start(env)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float, daemons: list[Daemon] | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        for d in daemons or self.daemons:
            while True:
                if not d.alive():
                    raise AssertionError(f"{d.name} exited:\n{d.log.read_text()[-3000:]}")
                try:
                    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.sock)), timeout=2) as c:
                        if c.get("http://x/health").status_code == 200:
                            break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{d.name} not healthy:\n{d.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        for d in self.daemons:
            d.signal(signal.SIGTERM)
        for d in self.daemons:
            if d.proc is not None:
                try:
                    d.proc.wait(20)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.log.read_text()[-2000:]}" for d in self.daemons if d.log.exists())


def even_spans(num_layers: int, n: int) -> list[str]:
    base, extra = divmod(num_layers, n)
    out, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        out.append(f"{start}:{end}")
        start = end
    return out
