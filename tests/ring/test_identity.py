"""Per-node identity on live daemons: a member forging another member's gossiped state is refused, and a
member banned by identity is cut off everywhere the ban spreads, and stays out when it restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster
from helpers import shared_cache_dir
from hostile_peer import RawPeer

from swarmd.keys import read_key_file
from swarmd.wire import codec
from swarmd.wire.identity import Identity, attestation
from swarmd.wire.messages import Gossip, MemberUpdate

pytestmark = pytest.mark.ring


def status(sock: Path) -> dict[str, Any]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
        return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]


def peer(doc: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    return next((p for p in doc["peers"] if p["node_id"] == node_id), None)


def wait_for(cond: Any, timeout: float, what: str, logs: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}\n{logs()}"
        time.sleep(0.1)


def signed(ident: Identity, node_id: str, addr: str, incarnation: int, meta_version: int, meta: bytes) -> MemberUpdate:
    sig = ident.sign(attestation(node_id, addr, incarnation, meta_version, meta, False))
    return MemberUpdate(node_id, addr, incarnation, "alive", meta_version, meta, node_id, ident.public, sig)


def test_a_member_cannot_forge_another_members_state(tiny_models: dict[str, Path], short_tmp: Path) -> None:
    cluster = Cluster(short_tmp, str(tiny_models["llama"]), ["0:4", "0:4"], shared_cache_dir(),
                      extra=["--gossip", "local"]).start()
    try:
        n0, n1 = cluster.daemons
        wait_for(lambda: (p := peer(status(n0.sock), "node1")) is not None and p["state"] == "alive", 30,
                 "node1 never alive at node0", cluster.logs)
        before = peer(status(n0.sock), "node1")
        assert before is not None and before["identity"]
        # An insider: holds the swarm key, completes the handshake, speaks for itself ...
        raw = RawPeer(n0.addr)
        raw.handshake(read_key_file(cluster.key))  # type: ignore[arg-type]
        raw.hello()
        evil = Identity.generate()
        # ... and claims node1 moved, left its layers and raised its incarnation, under its own key,
        forged = signed(evil, "node1", "127.0.0.1:9", before["incarnation"] + 5, 1 << 40, b"")
        # and introduces a member with no signature at all.
        unsigned = MemberUpdate("ghost", "127.0.0.1:9", 0, "alive", 0, b"", "ghost")
        raw.raw(raw.sealed(codec.encode(Gossip(raw.node_id, (forged, unsigned)))))
        doc = status(n0.sock)
        wait_for(lambda: status(n0.sock)["gossip"]["dropped"].get("forged", 0) >= 1, 10, "forgery not refused",
                 cluster.logs)
        doc = status(n0.sock)
        after = peer(doc, "node1")
        assert after is not None and after["addr"] == before["addr"] and after["state"] == "alive"
        assert after["incarnation"] == before["incarnation"] and after["identity"] == before["identity"]
        assert doc["gossip"]["dropped"].get("unsigned", 0) >= 1 and peer(doc, "ghost") is None
        assert n1.name in doc["ring"] or n0.name in doc["ring"]
    finally:
        cluster.stop()


def swarmctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarmd.cli.swarmctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30)


def test_a_ban_spreads_and_the_banned_node_cannot_rejoin(tiny_models: dict[str, Path], short_tmp: Path) -> None:
    cluster = Cluster(short_tmp, str(tiny_models["llama"]), ["0:4", "0:4", "0:4"], shared_cache_dir(),
                      extra=["--gossip", "local"]).start()
    try:
        n0, n1, n2 = cluster.daemons
        for d in (n0, n1):
            wait_for(lambda d=d: sum(p["state"] == "alive" for p in status(d.sock)["peers"]) == 2, 30,
                     f"{d.name} does not see two live peers", cluster.logs)
        fp = peer(status(n0.sock), "node2")["identity"]  # type: ignore[index]
        assert swarmctl(n0.sock, "ban", "nobody").returncode == 1  # unknown member: refused, nothing banned
        out = swarmctl(n0.sock, "ban", "node2")
        assert out.returncode == 0 and fp in out.stdout, out
        # node1 never heard the operator: the ban reaches it through node0's gossiped metadata.
        for d in (n0, n1):
            wait_for(lambda d=d: status(d.sock)["identity"]["banned_nodes"] == ["node2"], 15,
                     f"ban not seen by {d.name}", cluster.logs)
            wait_for(lambda d=d: (p := peer(status(d.sock), "node2")) is None or p["state"] != "alive", 30,
                     f"node2 still alive at {d.name}", cluster.logs)
        assert "node2" not in status(n0.sock)["ring"]
        # Restarted (same identity key from its state directory), it is refused at every link.
        n2.signal(signal.SIGKILL)
        assert n2.proc is not None
        n2.proc.wait(10)
        n2.start(dict(os.environ, SWARMD_CACHE_DIR=str(cluster.cache_dir), HF_HUB_OFFLINE="1"))
        wait_for(lambda: n2.sock.exists(), 60, "node2 did not restart", cluster.logs)
        time.sleep(8)  # dozens of gossip rounds of the local profile
        for d in (n0, n1):
            doc = status(d.sock)
            gone = peer(doc, "node2")
            assert gone is None or gone["state"] != "alive", doc["peers"]
            assert "node2" not in doc["ring"]
        assert all(p["state"] != "alive" for p in status(n2.sock)["peers"])
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(n0.sock)), timeout=60) as c:
            r = c.post("http://x/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
    finally:
        cluster.stop()
