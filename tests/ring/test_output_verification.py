"""A member that computes wrong outputs is caught by spot checks, quarantined swarm-wide, and the
sessions it touched still give exactly transformers' greedy text (loopback, real processes).

One of three replicas of a span runs with ``--test-corrupt-output`` (it negates everything it computes).
The entry checks at the default 5% rate; a member it has not yet seen pass probation is checked on every
session, so the liar is found in its first checked session, whether it is the stage that serves the
session (its token is held back, then the session is replayed without it) or the shadow that checks it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from cluster import Cluster
from helpers import shared_cache_dir
from model_factory import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.ring
PROMPTS = ["The quick brown fox", "Once upon a time", "Hello there, general", "In the beginning",
           "A B C D E", "swarms of small machines"]
TOKENS = 20


def status(sock: Path) -> dict[str, Any]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
        return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]


def wait_members(cluster: Cluster, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for d in cluster.daemons:
        while sum(p["state"] == "alive" for p in status(d.sock)["peers"]) < n - 1:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.1)


# (spans, index of the liar, whether it claims to be fast): the liar holds the last span (its tokens are
# checked against logits) or a middle span (its hidden states are checked as the next hop received them).
# Claiming speed makes routing put it in the chain (it serves, is caught, the session is replayed without
# it); otherwise it is first met as the shadow checking an honest stage (caught the same way, no replay).
LAYOUTS = {"last_span_shadow": (["0:2", "2:4", "2:4", "2:4"], 2, False),
           "last_span_serving": (["0:2", "2:4", "2:4", "2:4"], 2, True),
           "middle_span_serving": (["0:1", "1:3", "1:3", "1:3", "3:4"], 2, True)}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_lying_member_is_quarantined_and_its_sessions_finish_correct(short_tmp: Path, layout: str) -> None:
    spans, liar, fast = LAYOUTS[layout]
    model = make_tiny_model(short_tmp / "m4", "llama", layers=4, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = {}
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        out = ref.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)[0, len(ids):].tolist()
        want[p] = tok.decode(out, skip_special_tokens=True)
    cluster = Cluster(short_tmp, str(model), spans, shared_cache_dir(),
                      extra=["--gossip", "local", "--spot-check", "0.05", "--spot-check-seed", "7"])
    cluster.daemons[liar].args += ["--test-corrupt-output", *(["--seconds-per-layer", "1e-6"] if fast else [])]
    entry, liar_id = cluster.daemons[0], cluster.daemons[liar].name
    cluster.start()
    try:
        wait_members(cluster, len(spans))
        deadline = time.monotonic() + 30
        while fast and liar_id not in status(entry.sock)["ring"]:  # routing has seen its (claimed) speed
            assert time.monotonic() < deadline, status(entry.sock)
            time.sleep(0.1)
        steps_until_caught = None
        done_steps = 0
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=120) as c:
            for p in PROMPTS:
                r = c.post("http://x/v1/completions", json={"prompt": p, "max_tokens": TOKENS, "temperature": 0})
                assert r.status_code == 200, (r.text, cluster.logs())
                assert r.json()["choices"][0]["text"] == want[p], (p, cluster.logs())
                done_steps += TOKENS
                v = status(entry.sock)["verification"]
                if steps_until_caught is None and any(q["node_id"] == liar_id for q in v["quarantined"]):
                    steps_until_caught = done_steps
        v = status(entry.sock)["verification"]
        print(f"{layout}: quarantined after at most {steps_until_caught} steps; checks {v}")
        assert steps_until_caught is not None and steps_until_caught <= 100, v
        assert v["mismatches"] >= 1 and v["quarantined"] == [{"node_id": liar_id, "by": [entry.name]}], v
        assert [f["node_id"] for f in v["own_findings"]] == [liar_id]
        assert v["steps"] > 0 and v["referees"] >= 1 and v["inconclusive"] == 0, v
        # Gossip carries the finding: every other member avoids the liar too.
        deadline = time.monotonic() + 10
        for d in cluster.daemons[1:]:
            if d.name == liar_id:
                continue
            while not any(p["node_id"] == liar_id and p["quarantined_by"] == [entry.name]
                          for p in status(d.sock)["peers"]):
                assert time.monotonic() < deadline, (d.name, status(d.sock)["peers"])
                time.sleep(0.1)
        doc = status(entry.sock)
        assert liar_id not in doc["ring"]
        if fast:  # it served a session: that session was replayed without it (and still came out right)
            assert doc["failover"]["replays"] >= 1 and doc["failover"]["last"]["failed_node"] == liar_id, doc
            assert "contradicted" in v["own_findings"][0]["why"]
    finally:
        cluster.stop()
