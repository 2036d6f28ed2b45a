"""Throw-away test hosts: network namespaces joined by a bridge, with real multicast between them.

Needs root and iproute2 (CI runs as root). Every name carries a random suffix, and ``close`` removes
everything, so parallel runs and crashed runs do not collide. Traffic stays inside these namespaces.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

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
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    names: list[str] = field(default_factory=list)
    addrs: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"swhub{self.tag}"

    def __enter__(self) -> Lab:
        try:
            sh("ip", "netns", "add", self.hub)
            sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            third = int(self.tag, 16) % 250 + 1
            for i in range(self.hosts):
                ns = f"sw{self.tag}h{i}"
                sh("ip", "netns", "add", ns)
                self.names.append(ns)
                sh("ip", "link", "add", f"swv{self.tag}{i}", "netns", ns, "type", "veth", "peer", "name",
                   f"swp{self.tag}{i}", "netns", self.hub)
                sh("ip", "-n", self.hub, "link", "set", f"swp{self.tag}{i}", "master", "br0", "up")
                addr = f"{SUBNET}.{third}.{i + 1}"
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", f"swv{self.tag}{i}")
                sh("ip", "-n", ns, "link", "set", f"swv{self.tag}{i}", "up", "multicast", "on")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", f"swv{self.tag}{i}")
                self.addrs.append(addr)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec_args(self, i: int, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[i], *cmd]

    def close(self) -> None:
        for ns in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
