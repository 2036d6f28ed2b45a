"""A tensor-parallel stage whose worker process dies mid-stream: the node leaves the swarm and exits 70,
and the entry replays the session onto a replica; the client gets exactly transformers' greedy tokens."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from cluster import Cluster
from helpers import shared_cache_dir
from model_factory import make_tiny_model
from test_failover import serving_stage, status
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.ring
TOKENS, KILL_AT = 160, 60


def test_lost_tp_worker_takes_the_node_out_and_the_stream_fails_over(short_tmp: Path) -> None:
    model = make_tiny_model(short_tmp / "m4", "llama", layers=4, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = ref.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)[0, len(ids):].tolist()
    # node0: entry and layers 0:2; node1: a slow replica of 2:4; node2 (added): a fast replica of 2:4 split over
    # two ranks, which routing prefers.
    cluster = Cluster(short_tmp, str(model), ["0:2", "2:4"], shared_cache_dir(),
                      extra=["--gossip", "local", "--seconds-per-layer", "0.5"]).start()
    try:
        tp = cluster.add("2:4", extra=["--gossip", "local", "--seconds-per-layer", "0.001", "--tensor-parallel", "2"])
        cluster.wait_healthy(180)
        entry = cluster.daemons[0]
        deadline = time.monotonic() + 60
        while sum(1 for p in status(entry.sock)["peers"] if p["layers"] == [2, 4] and p["state"] == "alive") < 2:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.1)
        pieces: list[str] = []
        killed = False
        body = {"prompt": ids, "max_tokens": TOKENS, "temperature": 0, "stream": True}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=120) as c:
            with c.stream("POST", "http://x/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, (chunk, cluster.logs())
                    pieces += [ch["text"] for ch in chunk["choices"]]
                    if len(pieces) == KILL_AT and not killed:
                        assert serving_stage(cluster, entry) is tp, "routing did not prefer the faster TP node"
                        assert tp.proc is not None
                        workers = [p for p in psutil.Process(tp.proc.pid).children(recursive=True)
                                   if "spawn_main" in " ".join(p.cmdline())]
                        assert len(workers) == 1
                        workers[0].send_signal(signal.SIGKILL)
                        killed = True
        assert killed
        assert "".join(pieces) == tok.decode(want, skip_special_tokens=True), cluster.logs()
        assert tp.proc is not None and tp.proc.wait(30) == 70
        replays = status(entry.sock)["failover"]
        assert replays["replays"] == 1 and replays["last"]["failed_node"] == tp.name, replays
        assert "tensor-parallel worker lost" in tp.log.read_text()
    finally:
        cluster.stop()
