"""Daemons in separate network namespaces, no seed peers: mDNS finds the swarm, the ring forms and
answers identically through every node; a daemon with another key on the same bridge never joins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cluster import write_key
from helpers import shared_cache_dir
from netns_lab import Lab, available

pytestmark = [pytest.mark.netns, pytest.mark.skipif(available() is not None, reason=str(available()))]


def status(sock: Path) -> dict:  # type: ignore[type-arg]
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
        return c.get("http://x/v1/swarm/status").json()


def test_mdns_ring_without_seed_peers(tiny_models: dict[str, Path], short_tmp: Path) -> None:
    key, other = write_key(short_tmp / "a.key"), write_key(short_tmp / "b.key")
    spans = ["0:2", "2:4", "0:4"]  # the third node holds everything but belongs to another swarm
    keys = [key, key, other]
    env = dict(os.environ, SWARMD_CACHE_DIR=str(shared_cache_dir()), HF_HUB_OFFLINE="1")
    with Lab(3) as lab:
        procs, socks = [], []
        for i in range(3):
            sock = short_tmp / f"n{i}.sock"
            socks.append(sock)
            args = lab.exec_args(i, sys.executable, "-m", "swarmd.cli.swarmd_main", "--model",
                                 str(tiny_models["llama"]), "--layers", spans[i], "--listen", "0.0.0.0:7070",
                                 "--node-id", f"ns{i}", "--socket", str(sock), "--key-file", str(keys[i]),
                                 "--threads", "1")
            procs.append(subprocess.Popen(args, env=env, stdout=open(short_tmp / f"n{i}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    docs = [status(s) for s in socks[:2]]
                    if all(d["ring"] == ["ns0", "ns1"] for d in docs):
                        break
                except (httpx.HTTPError, OSError, KeyError):
                    pass
                assert time.monotonic() < deadline, "\n".join((short_tmp / f"n{i}.log").read_text()[-1500:]
                                                               for i in range(3))
                time.sleep(0.2)
            answers = []
            for s in socks[:2]:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(s)), timeout=60) as c:
                    r = c.post("http://x/v1/completions", json={"prompt": "The quick brown fox", "max_tokens": 16,
                                                                "temperature": 0})
                    assert r.status_code == 200, r.text
                    answers.append(r.json()["choices"][0]["text"])
            assert answers[0] == answers[1]
            time.sleep(2)  # give the stranger every chance to be (wrongly) listed
            for d in [status(s) for s in socks]:
                member_ids = {p["node_id"] for p in d["peers"] if p["state"] == "alive"}
                assert "ns2" not in member_ids and (d["node_id"] == "ns2") == (member_ids == set())
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
