"""Real multicast mDNS between network namespaces: same-swarm daemons find each other, others never do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from netns_lab import Lab, available

pytestmark = [pytest.mark.netns, pytest.mark.skipif(available() is not None, reason=str(available()))]
AGENT = Path(__file__).with_name("mdns_agent.py")


def test_discovery_finds_own_swarm_only() -> None:
    keys = ["swarm-a", "swarm-a", "swarm-a", "swarm-b"]
    with Lab(len(keys)) as lab:
        procs = [
            subprocess.Popen(lab.exec_args(i, sys.executable, str(AGENT), "--node", f"h{i}", "--key", keys[i],
                                           "--addr", lab.addrs[i], "--seconds", "6"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(len(keys))
        ]
        found: list[set[tuple[str, str]]] = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            found.append({(j["node_id"], j["addr"]) for j in map(json.loads, out.splitlines())})
    for i in range(3):
        want = {(f"h{j}", f"{lab.addrs[j]}:7070") for j in range(3) if j != i}
        assert found[i] == want, (i, found[i])
    assert found[3] == set()  # alone in swarm-b: it sees nobody, and nobody lists it
