"""``swarmctl doctor`` in network namespaces: it names what keeps a node out of the swarm.

Five hosts on the lab switch, real multicast mDNS:
  ns0, ns1  a healthy swarm of two (layers 0:2 and 2:4), no seeds
  ns2       the same model on another swarm key, seed ns0
  ns3       the right key, but the switch drops all multicast to and from it; seed ns0
  ns4       the right key; the switch drops its TCP to ns0's port, and its second seed names a port where
            nothing listens
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import write_key
from netns_lab import Lab, available
from netns_swarm import NetSwarm, try_status

from swarmd.doctor import MDNS_GRACE_S

pytestmark = [pytest.mark.netns, pytest.mark.skipif(available() is not None, reason=str(available()))]

PORT = 7070


def doctor(sock: Path) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "swarmd.cli.swarmctl", "--socket", str(sock), "doctor", *extra],
                              capture_output=True, text=True, timeout=120)

    as_json, text = run("--json"), run()
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def fails(doc: dict, check: str) -> list[str]:  # type: ignore[type-arg]
    return [f["message"] for f in doc["findings"] if f["level"] == "fail" and f["check"] == check]


@pytest.fixture(scope="module")
def lab_swarm(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetSwarm]:
    root = Path(tempfile_dir := str(tmp_path_factory.mktemp("doc", numbered=True)))
    assert len(tempfile_dir) < 90  # Unix socket paths are short
    key, other = write_key(root / "swarm.key"), write_key(root / "other.key")
    with Lab(5, switch=True) as lab:
        a = lab.addrs
        lab.mute_multicast([3])
        lab.drop_tcp([(4, 0, PORT)])
        swarm = NetSwarm(lab, root, tiny_models["llama"], key, ["0:2", "2:4", "0:4", "none", "none"])
        try:
            swarm.launch(0)
            swarm.launch(1)
            swarm.key = other
            swarm.launch(2, "--peer", f"{a[0]}:{PORT}")
            swarm.key = key
            swarm.launch(3, "--peer", f"{a[0]}:{PORT}")
            swarm.launch(4, "--peer", f"{a[0]}:{PORT}", "--peer", f"{a[1]}:{PORT + 1}")
            members = {"ns0", "ns1", "ns3", "ns4"}

            def joined(i: int) -> bool:
                d = try_status(swarm.sock(i))
                return d is not None and {p["node_id"] for p in d["peers"] if p["state"] == "alive"} == \
                    members - {f"ns{i}"}

            # ns4 joins through ns1 (mDNS): it cannot reach ns0's port, so it stays degraded.
            swarm.wait_for(lambda: all(joined(i) for i in (0, 1, 3, 4)), "every member to know the others",
                           timeout=240)
            def listened(i: int) -> float:  # seconds its mDNS has been up
                return float(doctor(swarm.sock(i))[1]["facts"]["mdns"].get("uptime_s", 0.0))

            swarm.wait_for(lambda: min(listened(i) for i in range(5)) > MDNS_GRACE_S + 1, "mDNS's grace period",
                           timeout=90)
            yield swarm
        finally:
            swarm.stop()


def test_healthy_member_passes_but_sees_the_stranger(lab_swarm: NetSwarm) -> None:
    code, doc, text = doctor(lab_swarm.sock(1))
    assert code == 0, text
    assert doc["in_swarm"] and "ns0" in doc["verdict"]
    warns = [f["message"] for f in doc["findings"] if f["level"] == "warn"]
    assert any("ns2" in w and "another swarm key" in w for w in warns), text
    assert "[ok  ] peer: ns0 at" in text


def test_node_on_another_swarm_key(lab_swarm: NetSwarm) -> None:
    code, doc, text = doctor(lab_swarm.sock(2))
    assert code == 1, text
    assert not doc["in_swarm"] and doc["verdict"].startswith("not in the swarm")
    seed = f"{lab_swarm.lab.addrs[0]}:{PORT}"
    refused = [m for m in fails(doc, "peer") if seed in m]
    assert refused and "holds none of this node's swarm keys" in refused[0], text
    assert "another swarm" in doc["verdict"]
    # mDNS heard the real swarm's members and says they use another key.
    assert any("ns0" in f["message"] and "another swarm key" in f["message"] for f in doc["findings"]), text
    # ...and the member it knocked on remembers refusing it, and why.
    _, doc0, text0 = doctor(lab_swarm.sock(0))
    host2 = lab_swarm.lab.addrs[2]
    assert any(f["check"] == "refusal" and host2 in f["message"] and "none of this swarm's keys" in f["message"]
               for f in doc0["findings"]), text0


def test_node_whose_multicast_is_blocked(lab_swarm: NetSwarm) -> None:
    code, doc, text = doctor(lab_swarm.sock(3))
    assert code == 1, text
    assert doc["in_swarm"]  # its seed got it in
    blocked = fails(doc, "mdns")
    assert blocked and "multicast looks blocked" in blocked[0] and "ns0" in blocked[0], text
    assert "5353" in blocked[0]


def test_unreachable_ports(lab_swarm: NetSwarm) -> None:
    code, doc, text = doctor(lab_swarm.sock(4))
    assert code == 1, text
    a = lab_swarm.lab.addrs
    by_addr = {p["addr"]: p for p in doc["facts"]["probes"]}
    assert by_addr[f"{a[0]}:{PORT}"]["outcome"] == "timeout"
    assert by_addr[f"{a[1]}:{PORT + 1}"]["outcome"] == "refused"
    assert by_addr[f"{a[1]}:{PORT}"]["outcome"] == "ok"
    peer_fails = fails(doc, "peer")
    assert any(f"{a[0]}:{PORT}" in m and "firewall drops" in m for m in peer_fails), text
    assert any(f"{a[1]}:{PORT + 1}" in m and "nothing listens on that port" in m for m in peer_fails), text


def test_unreachable_daemon_exit_code(tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmctl", "--socket", str(tmp_path / "none.sock"),
                          "doctor"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "swarmd is not running" in out.stdout
    assert time.monotonic() - started < 30
