"""A generation survives ``kill -9`` of a stage: the entry replays the history onto a replica and the
client receives exactly transformers' greedy tokens, none lost or repeated (loopback, real processes).

``SWARMD_FAILOVER_RUNS`` sets how many kills (default 20)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch
from cluster import Cluster, Daemon
from helpers import shared_cache_dir
from model_factory import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.ring
PROMPT = "The quick brown fox jumps over the lazy dog."
TOKENS, KILL_AT = 200, 100


def status(sock: Path) -> dict:  # type: ignore[type-arg]
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
        return c.get("http://x/v1/swarm/status").json()  # type: ignore[no-any-return]


def wait_replicated(cluster: Cluster, entry: Daemon, timeout: float = 60) -> None:
    """Until the entry sees every layer held twice (both replicas routable)."""
    deadline = time.monotonic() + timeout
    while status(entry.sock)["layer_replicas"]["min"] < 2:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)


def serving_stage(cluster: Cluster, entry: Daemon, span: tuple[int, int] = (2, 4)) -> Daemon:
    """The daemon that runs ``span`` for the session in flight, from each daemon's own status (the entry's
    preferred ring may flip between two equally fast replicas from one moment to the next)."""
    for d in cluster.daemons:
        if d is entry or not d.alive():
            continue
        if any(s["layers"] == list(span) and s["sessions"] > 0 for s in status(d.sock)["spans"]):
            return d
    raise AssertionError(f"no daemon runs layers {span} for the session in flight")


def test_kill_9_of_a_stage_mid_stream_loses_nothing(short_tmp: Path) -> None:
    runs = int(os.environ.get("SWARMD_FAILOVER_RUNS", "20"))
    model = make_tiny_model(short_tmp / "m4", "llama", layers=4, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = ref.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)[0, len(ids):].tolist()
    cluster = Cluster(short_tmp, str(model), ["0:2", "0:2", "2:4", "2:4"], shared_cache_dir(),
                      extra=["--gossip", "local"]).start()
    pauses, gaps = [], []
    try:
        entry = cluster.daemons[0]
        for run in range(runs):
            cluster.wait_healthy(60)
            wait_replicated(cluster, entry)  # the node killed last run is back as a standby
            victim: Daemon | None = None
            pieces: list[str] = []
            stamps: list[float] = []
            killed_at = None
            usage = None
            body = {"prompt": ids, "max_tokens": TOKENS, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=120) as c:
                with c.stream("POST", "http://x/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        assert "error" not in chunk, (run, chunk, cluster.logs())
                        usage = chunk.get("usage") or usage
                        for choice in chunk["choices"]:
                            pieces.append(choice["text"])
                            stamps.append(time.monotonic())
                        if len(stamps) == KILL_AT and killed_at is None:
                            victim = serving_stage(cluster, entry)
                            victim.signal(signal.SIGKILL)
                            killed_at = time.monotonic()
            assert "".join(pieces) == tok.decode(want, skip_special_tokens=True), (run, cluster.logs())
            assert usage is not None and usage["completion_tokens"] == TOKENS, usage  # none lost, none twice
            after = [t for t in stamps if killed_at is not None and t > killed_at]
            pauses.append(after[0] - killed_at if after and killed_at else float("nan"))
            gaps.append(max(b - a for a, b in zip(stamps, stamps[1:], strict=False)))
            assert victim is not None and victim.proc is not None
            victim.proc.wait(10)
            victim.start(dict(os.environ, SWARMD_CACHE_DIR=str(cluster.cache_dir), HF_HUB_OFFLINE="1"))
        print(f"pause from kill -9 to the next token over {runs} runs: "
              f"max {max(pauses) * 1000:.0f} ms, all {[round(p * 1000) for p in pauses]} ms; "
              f"largest gap between streamed tokens {max(gaps) * 1000:.0f} ms")
    finally:
        cluster.stop()


def test_drain_of_a_stage_mid_stream_moves_its_session_and_leaves(short_tmp: Path) -> None:
    """``swarmctl drain`` on a stage of a streaming chain: no new sessions go to it, the stream outlives the
    drain timeout (the stage hands the session back, the entry replays it on the replica) with exactly
    the tokens of ``generate``; the drained daemon leaves (others list it as left) and exits 0."""
    import subprocess
    import sys
    import threading

    from helpers import stream_completion

    model = make_tiny_model(short_tmp / "m4", "llama", layers=4, context=2048, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    n = 1500
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = tok.decode(ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist(),
                      skip_special_tokens=True)
    cluster = Cluster(short_tmp, str(model), ["0:2", "0:2", "2:4", "2:4"], shared_cache_dir(),
                      extra=["--gossip", "local", "--drain-timeout", "1.5"]).start()
    try:
        entry = cluster.daemons[0]
        wait_replicated(cluster, entry)
        result: dict[str, object] = {}
        worker = threading.Thread(target=stream_completion,
                                  args=(entry.sock, {"prompt": ids, "max_tokens": n, "temperature": 0}, result))
        worker.start()
        time.sleep(1.0)
        victim = serving_stage(cluster, entry)
        drained = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmctl", "--socket", str(victim.sock), "drain"],
                                 capture_output=True, text=True, timeout=30)
        assert drained.returncode == 0 and "draining" in drained.stdout, drained
        worker.join(300)
        assert "error" not in result, (result, cluster.logs())
        assert result["text"] == want, cluster.logs()
        replays = status(entry.sock)["failover"]
        assert replays["replays"] == 1 and replays["last"]["failed_node"] == victim.name, replays
        assert victim.proc is not None and victim.proc.wait(30) == 0
        # It announced its leave (never declared dead); its tombstone may already be gone (5 s with --gossip local).
        assert f"member {victim.name} is left" in entry.log.read_text(), cluster.logs()
        assert not [p for p in status(entry.sock)["peers"] if p["node_id"] == victim.name and p["state"] != "left"]
    finally:
        cluster.stop()


def test_sigstop_of_a_stage_for_3s_replays_without_evicting_it(short_tmp: Path) -> None:
    """A stage frozen for 3 s (SIGSTOP) stalls the stream: the entry replays onto the replica after the
    stall timeout, the output is exactly ``generate``'s, and gossip (LAN timings) never declares the frozen
    node dead: it refutes the suspicion when it wakes."""
    model = make_tiny_model(short_tmp / "m4", "llama", layers=4, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = tok.decode(ref.generate(torch.tensor([ids]), max_new_tokens=300, do_sample=False)[0, len(ids):].tolist(),
                      skip_special_tokens=True)
    cluster = Cluster(short_tmp, str(model), ["0:2", "0:2", "2:4", "2:4"], shared_cache_dir()).start()
    try:
        entry = cluster.daemons[0]
        wait_replicated(cluster, entry)
        victim: Daemon | None = None
        pieces: list[str] = []
        body = {"prompt": ids, "max_tokens": 300, "temperature": 0, "stream": True}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=120) as c:
            with c.stream("POST", "http://x/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        assert "error" not in chunk, (chunk, cluster.logs())
                        pieces.extend(choice["text"] for choice in chunk["choices"])
                        if len(pieces) == 100:
                            victim = serving_stage(cluster, entry)
                            victim.signal(signal.SIGSTOP)
                            stopped_at = time.monotonic()
        assert "".join(pieces) == want, cluster.logs()
        time.sleep(max(0.0, stopped_at + 3.0 - time.monotonic()))
        assert victim is not None
        victim.signal(signal.SIGCONT)
        time.sleep(6.0)  # past any suspicion timeout: a wrong verdict would have been reached by now
        for d in cluster.daemons:
            assert f"member {victim.name} is dead" not in d.log.read_text(), (d.name, cluster.logs())
        assert status(entry.sock)["failover"]["replays"] == 1
        assert [p["state"] for p in status(entry.sock)["peers"] if p["node_id"] == victim.name] == ["alive"]
    finally:
        for d in cluster.daemons:
            d.signal(signal.SIGCONT)
        cluster.stop()
