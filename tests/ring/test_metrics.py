"""``GET /metrics`` on a 3-node ring: parsed with the Prometheus client's own parser, and the counters
and histograms move with the generations run through the ring."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cluster import Cluster
from helpers import shared_cache_dir
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ring


def scrape(sock: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, every sample of every family."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as c:
        r = c.get("http://x/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return m.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    return sum(m.get(name, {}).values())


@pytest.fixture()
def tmp_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swm-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_metrics_move_with_generations_through_a_ring(tiny_models: dict[str, Path], tmp_short: Path) -> None:
    cluster = Cluster(tmp_short, str(tiny_models["llama"]), ["0:2", "2:3", "3:4"], shared_cache_dir()).start()
    try:
        entry, middle = cluster.daemons[0], cluster.daemons[1]
        before = scrape(entry.sock)
        assert one(before, "swarmd:peers", state="alive") == 2
        assert one(before, "swarmd:num_requests_running") == 0
        assert total(before, "swarmd:time_to_first_token_seconds_count") == 0
        before_mid = scrape(middle.sock)

        n, tokens = 3, 12
        got_tokens = 0
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(entry.sock)), timeout=120) as c:
            for i in range(n):
                body = {"prompt": [1, 5, 9, 13 + i], "max_tokens": tokens, "temperature": 0,
                        "stream": i == 0}
                r = c.post("http://x/v1/completions", json=body)
                assert r.status_code == 200
                if i > 0:
                    got_tokens += r.json()["usage"]["completion_tokens"]
            # A request this node cannot take: counted as neither running nor finished.
            assert c.post("http://x/v1/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400
        after = scrape(entry.sock)

        assert one(after, "swarmd:time_to_first_token_seconds_count") == n
        assert one(after, "swarmd:e2e_request_latency_seconds_count") == n
        assert one(after, "swarmd:time_to_first_token_seconds_bucket", le="+Inf") == n
        ttft_sum = one(after, "swarmd:time_to_first_token_seconds_sum")
        assert one(after, "swarmd:e2e_request_latency_seconds_sum") > ttft_sum > 0
        generated = one(after, "swarmd:generation_tokens_total")
        assert generated >= got_tokens > 0
        # Every token after a request's first is one inter-token gap.
        assert one(after, "swarmd:inter_token_latency_seconds_count") == generated - n
        assert one(after, "swarmd:prompt_tokens_total") == 4 * n
        assert sum(v for k, v in after["swarmd:request_success_total"].items()) == n
        assert one(after, "swarmd:num_requests_running") == 0 and one(after, "swarmd:num_requests_waiting") == 0
        # The entry holds layers 0:2: its stage ran every step of those sessions.
        steps = one(after, "swarmd:stage_compute_seconds_count", span="0:2")
        assert steps >= generated and one(after, "swarmd:stage_queue_seconds_count", span="0:2") == steps
        # The middle stage computed for the entry's sessions, and was never an entry itself.
        mid = scrape(middle.sock)
        assert one(mid, "swarmd:stage_compute_seconds_count", span="2:3") - \
            one(before_mid, "swarmd:stage_compute_seconds_count", span="2:3") >= generated
        assert one(mid, "swarmd:time_to_first_token_seconds_count") == 0
        # Links are pinged: per-peer hop latency from the entry to both other stages.
        hops = {dict(k)["peer"] for k in after.get("swarmd:hop_latency_seconds_count", {})}
        assert {"node1", "node2"} <= hops
        info = after["swarmd:node_info"]
        assert dict(next(iter(info)))["node_id"] == "node0"

        # Bytes that are no handshake: counted as a rejected frame, by reason.
        host, port = entry.addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"\x00\x00\x00\x05hello")  # not a handshake
            s.settimeout(5)
            try:
                s.recv(16)
            except OSError:
                pass
        m = scrape(entry.sock)
        old = after.get("swarmd:frames_rejected_total", {})
        grew = [dict(k)["reason"] for k, v in m["swarmd:frames_rejected_total"].items() if v > old.get(k, 0)]
        assert len(grew) == 1 and grew[0] not in ("IncompleteReadError", "handshake_eof"), grew
    finally:
        cluster.stop()
