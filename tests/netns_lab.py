"""Throw-away test hosts: network namespaces joined by a bridge, with real multicast between them.

Needs root and iproute2 (CI runs as root). Every name carries a random suffix, and ``close`` removes
everything, so parallel runs and crashed runs do not collide. Traffic stays inside these namespaces.

``Lab(n, switch=True)`` joins the hosts through ``netns_switch.py`` (a user-space switch) instead of a
kernel bridge, for tests that need packet loss, delay, jitter or cut links (``impair``, ``block``,
``partition``): the CI kernel has no netem and no packet filter.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77"


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Lab:
    hosts: int
    switch: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    names: list[str] = field(default_factory=list)
    addrs: list[str] = field(default_factory=list)
    _switch: subprocess.Popen[str] | None = None

    @property
    def hub(self) -> str:
        return f"swhub{self.tag}"

    def __enter__(self) -> Lab:
        try:
            sh("ip", "netns", "add", self.hub)
            if not self.switch:
                sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
                sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            third = int(self.tag, 16) % 250 + 1
            for i in range(self.hosts):
                ns = f"sw{self.tag}h{i}"
                sh("ip", "netns", "add", ns)
                self.names.append(ns)
                sh("ip", "link", "add", f"swv{self.tag}{i}", "netns", ns, "type", "veth", "peer", "name",
                   f"swp{self.tag}{i}", "netns", self.hub)
                if self.switch:  # one frame per packet, so a loss drops one segment, as netem would
                    sh("ip", "-n", self.hub, "link", "set", f"swp{self.tag}{i}", "up")
                    sh("ip", "-n", ns, "link", "set", f"swv{self.tag}{i}", "gso_max_segs", "1")
                else:
                    sh("ip", "-n", self.hub, "link", "set", f"swp{self.tag}{i}", "master", "br0", "up")
                addr = f"{SUBNET}.{third}.{i + 1}"
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", f"swv{self.tag}{i}")
                sh("ip", "-n", ns, "link", "set", f"swv{self.tag}{i}", "up", "multicast", "on")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", f"swv{self.tag}{i}")
                self.addrs.append(addr)
            if self.switch:
                self._start_switch()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec_args(self, i: int, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[i], *cmd]

    def _start_switch(self) -> None:
        script = str(Path(__file__).with_name("netns_switch.py"))
        ports = [f"swp{self.tag}{i}" for i in range(self.hosts)]
        self._switch = subprocess.Popen(["ip", "netns", "exec", self.hub, sys.executable, script, *ports],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._switch.stdout is not None
        assert self._switch.stdout.readline().strip() == "ready", "the lab switch did not start"

    def _command(self, **cmd: object) -> None:
        assert self._switch is not None and self._switch.stdin is not None and self._switch.stdout is not None, \
            "impairments need Lab(..., switch=True)"
        self._switch.stdin.write(json.dumps(cmd) + "\n")
        self._switch.stdin.flush()
        assert self._switch.stdout.readline().strip() == "ok"

    def impair(self, loss: float = 0.0, delay: float = 0.0, jitter: float = 0.0) -> None:
        """Every frame on every link: lost with probability ``loss``, else held ``delay`` ± ``jitter`` s."""
        self._command(loss=loss, delay=delay, jitter=jitter)

    def block(self, pairs: list[tuple[int, int]]) -> None:
        """Drop every frame from host ``a`` to host ``b`` for each ``(a, b)``; ``[]`` heals every cut."""
        self._command(block=[list(p) for p in pairs])

    def mute_multicast(self, hosts: list[int]) -> None:
        """Drop every multicast frame from and to these hosts (mDNS blocked, unicast fine)."""
        self._command(mute_multicast=hosts)

    def drop_tcp(self, rules: list[tuple[int, int, int]]) -> None:
        """Drop TCP frames from host ``a`` to host ``b``'s port ``p`` for each ``(a, b, p)`` (a firewalled port)."""
        self._command(drop_tcp=[list(r) for r in rules])

    def partition(self, *sides: list[int]) -> None:
        """Cut every link between hosts on different sides (both directions)."""
        side_of = {h: i for i, side in enumerate(sides) for h in side}
        self.block([(a, b) for a in side_of for b in side_of if side_of[a] != side_of[b]])

    def close(self) -> None:
        if self._switch is not None:
            self._switch.kill()
            self._switch.wait()
            self._switch = None
        for ns in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
