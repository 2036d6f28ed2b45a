"""KV memory is reserved per session, refused with 503 + Retry-After when full, and freed at once."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NodeThread, node_config, start_node, uds_client

PER_TOKEN = 2 * 4 * 2 * 16 * 4  # K+V, 4 layers, 2 kv heads, head_dim 16, float32


@pytest.fixture()
def small_node(tiny_models: dict[str, Path]) -> Iterator[NodeThread]:
    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    node = start_node(node_config(tmp, str(tiny_models["llama"]), kv_default_bytes=320 * PER_TOKEN))
    assert node.node.engine.kv_per_token == PER_TOKEN
    yield node
    node.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def kv_status(node: NodeThread) -> dict:  # type: ignore[type-arg]
    with uds_client(node.socket) as c:
        return c.get("/v1/swarm/status").json()["kv_cache"]


def test_kv_budget_full_gives_503_with_retry_after(small_node: NodeThread) -> None:
    engine = small_node.node.engine
    small_node.call(lambda: engine.open_session("hog", 256))  # 16 pages of 16: leaves room for 64 tokens
    body = {"prompt": "Hello", "max_tokens": 100, "temperature": 0}
    with uds_client(small_node.socket) as c:
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "kv_budget_exceeded"
        assert c.post("/v1/completions", json={**body, "max_tokens": 20}).status_code == 200  # fits beside
        small_node.call(lambda: engine.close_session("hog"))
        assert c.post("/v1/completions", json=body).status_code == 200
    assert kv_status(small_node) == {"budget_bytes": 320 * PER_TOKEN, "used_bytes": 0, "sessions": 0}
    # The refused request is a failure by its code; it waited, never ran, and left no gauge behind.
    m = small_node.node.metrics
    assert m.failures.get(code="kv_budget_exceeded") == 1 and sum(m.successes.values.values()) == 2
    assert (m.waiting.get(), m.running.get(), m.ttft.count()) == (0, 0, 2)


def test_session_bigger_than_whole_budget_is_refused(small_node: NodeThread) -> None:
    with uds_client(small_node.socket) as c:
        r = c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 400})
    assert r.status_code == 503 and "Retry-After" in r.headers


def slow_down(node: NodeThread, delay: float) -> None:
    """Make every engine step take ``delay`` seconds, so a generation is long enough to interrupt."""
    engine = node.node.engine
    forward = engine.forward

    async def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)
        return await forward(*args, **kwargs)

    engine.forward = slow


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_kv_at_once(small_node: NodeThread, stream: bool) -> None:
    slow_down(small_node, 0.05)  # 200 tokens would take 10 s
    # Greedy on this prompt runs past 50 tokens with the tiny llama (see tests/ring): long enough to cut.
    prompt = "The quick brown fox jumps over the lazy dog. What is the capital of France?"
    body = json.dumps({"prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": stream}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect(small_node.socket)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.monotonic() + 5
    while kv_status(small_node)["sessions"] == 0:
        assert time.monotonic() < deadline, "session never started"
        time.sleep(0.02)
    if stream:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    closed_at = time.monotonic()
    while kv_status(small_node)["used_bytes"] != 0:
        assert time.monotonic() - closed_at < 1.0, "KV cache still held after the client left"
        time.sleep(0.02)
    assert small_node.node._active == 0
    m = small_node.node.metrics
    deadline = time.monotonic() + 5
    while m.running.get() != 0:  # the handler notices the client left at its next write or token
        assert time.monotonic() < deadline, "request still counted as running"
        time.sleep(0.02)
    assert m.failures.get(code="client_gone") + m.failures.get(code="aborted") == 1 and not m.successes.values


def test_too_many_sessions_gets_503(small_node: NodeThread) -> None:
    node = small_node.node
    node._active = node.cfg.api.max_sessions  # as if every slot were busy
    try:
        with uds_client(small_node.socket) as c:
            r = c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
        assert r.status_code == 503 and r.headers["Retry-After"]
    finally:
        node._active = 0
