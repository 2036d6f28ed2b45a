"""Leaderless placement with real daemons on loopback (seed peers, no mDNS): ``--layers auto`` nodes split
the model by memory and speed, and a join that reshuffles every span (make-before-break: load the new
span, drain the old one after its sessions end) leaves a streaming generation unchanged."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from cluster import Cluster
from helpers import memory_budgets, shared_cache_dir, stream_completion
from model_factory import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.ring
PROMPT = "The quick brown fox jumps over the lazy dog."
LONG = 1200


def status(sock: Path) -> dict | None:  # type: ignore[type-arg]
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
            return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]
    except (httpx.HTTPError, OSError, json.JSONDecodeError):
        return None


def wait_for(cluster: Cluster, cond, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert all(d.alive() for d in cluster.daemons), f"a daemon exited waiting for {what}\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{cluster.logs()}"
        time.sleep(0.2)


def spans_of(cluster: Cluster) -> dict[str, list[tuple[tuple[int, int], str]]]:
    out = {}
    for d in cluster.daemons:
        doc = status(d.sock)
        if doc is not None:
            out[d.name] = [(tuple(s["layers"]), s["state"]) for s in doc["spans"]]
    return out


def test_join_reshuffles_every_span_while_a_generation_streams(short_tmp: Path) -> None:
    model = make_tiny_model(short_tmp / "m8", "llama", layers=8, context=2048, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ref_ids = ref.generate(torch.tensor([ids]), max_new_tokens=LONG, do_sample=False)[0, len(ids):].tolist()
    want = tok.decode(ref_ids, skip_special_tokens=True)
    half, _ = memory_budgets(model)
    # Equal speeds (given, not measured) make the plans predictable: three nodes of half the model's
    # memory form one pipeline of three (3+3+2 layers beats 4+4); a fourth makes two pipelines of
    # 4+4, so every span changes.
    extra = ["--memory-budget", str(half), "--seconds-per-layer", "0.001", "--gossip", "local", "--settle", "1"]
    cluster = Cluster(short_tmp, str(model), ["auto"] * 3, shared_cache_dir(), extra=extra).start()
    try:
        before = spans_of(cluster)
        assert sorted(s[0][0] for s in before.values()) == [(0, 3), (3, 6), (6, 8)], before
        first = status(cluster.daemons[0].sock)
        assert first is not None and len(first["ring"]) == 3 and first["layer_replicas"]["min"] == 1

        cluster.add("auto")
        wait_for(cluster, lambda: any(p["node_id"] == "node3" and p["state"] == "alive"
                                      for p in (status(cluster.daemons[0].sock) or {"peers": []})["peers"]),
                 "node3 to join")
        result: dict[str, object] = {}

        body = {"prompt": ids, "max_tokens": LONG, "temperature": 0}
        worker = threading.Thread(target=stream_completion, args=(cluster.daemons[0].sock, body, result))
        worker.start()
        seen_transition = False  # some node held an old and a new span at once while the stream ran
        while worker.is_alive():
            now = spans_of(cluster)
            seen_transition |= any(len(s) > 1 for s in now.values())
            time.sleep(0.1)
        worker.join()
        assert "error" not in result, (result, cluster.logs())
        assert result["text"] == want, cluster.logs()
        assert seen_transition, f"no make-before-break transition observed during the stream\n{cluster.logs()}"

        def settled() -> bool:
            now = spans_of(cluster)
            return len(now) == 4 and all(len(s) == 1 and s[0][1] == "serving" for s in now.values()) and \
                sorted(s[0][0] for s in now.values()) == [(0, 4), (0, 4), (4, 8), (4, 8)]

        wait_for(cluster, settled, "two pipelines of 4+4 layers after the old spans drained")
        doc = status(cluster.daemons[3].sock)
        assert doc is not None and doc["layer_replicas"]["min"] == 2 and len(doc["ring"]) == 2
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(cluster.daemons[3].sock)), timeout=60) as c:
            r = c.post("http://x/v1/completions", json={"prompt": ids, "max_tokens": 32, "temperature": 0})
        assert r.json()["choices"][0]["text"] == tok.decode(ref_ids[:32], skip_special_tokens=True)
    finally:
        cluster.stop()


def test_kill_of_a_span_without_replica_fails_fast_then_survivors_load_it(short_tmp: Path) -> None:
    """Three ``auto`` nodes of half the model's memory form one pipeline (3+3+2 layers), so no span has a
    replica. ``kill -9`` of the last stage mid-stream: the stream ends at once with a clear 503-class
    error (no chain covers the model: nothing to replay onto), and placement on the two survivors loads
    the lost layers again (4+4), after which the swarm answers exactly like ``generate``."""
    import signal

    model = make_tiny_model(short_tmp / "m8", "llama", layers=8, context=2048, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ref_ids = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    half, _ = memory_budgets(model)
    extra = ["--memory-budget", str(half), "--seconds-per-layer", "0.001", "--gossip", "local", "--settle", "1"]
    cluster = Cluster(short_tmp, str(model), ["auto"] * 3, shared_cache_dir(), extra=extra).start()
    try:
        entry = cluster.daemons[0]
        first = status(entry.sock)
        assert first is not None and first["layer_replicas"]["min"] == 1 and len(first["ring"]) == 3
        victim = next(d for d in cluster.daemons if d.name == first["ring"][-1] and d is not entry)
        result: dict[str, object] = {}
        worker = threading.Thread(target=stream_completion,
                                  args=(entry.sock, {"prompt": ids, "max_tokens": LONG, "temperature": 0}, result))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive(), result
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        worker.join(30)
        assert "error" in result, result
        assert "no_chain" in str(result["error"]), (result, cluster.logs())
        assert float(result["done_at"]) - killed_at < 2.0, result  # type: ignore[arg-type]

        survivors = [d for d in cluster.daemons if d is not victim]
        wait_for_survivors = time.monotonic()
        while True:
            doc = status(entry.sock)
            if doc is not None and doc["layer_replicas"]["min"] >= 1 and doc["ring"]:
                break
            assert all(d.alive() for d in survivors), cluster.logs()
            assert time.monotonic() - wait_for_survivors < 60, f"the lost layers were never loaded\n{cluster.logs()}"
            time.sleep(0.2)
        assert sorted(doc["ring"]) == sorted(d.name for d in survivors), doc["ring"]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=60) as c:
            r = c.post("http://x/v1/completions", json={"prompt": ids, "max_tokens": 32, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == tok.decode(ref_ids, skip_special_tokens=True)
    finally:
        cluster.stop()
