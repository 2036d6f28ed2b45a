"""The HTTP API under abuse, on the TCP listener: random bodies and fields get a 4xx JSON error (never a
5xx, never a hang), and one client cannot hold more than its share of generations (429 + Retry-After)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import NodeThread, node_config, start_node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOKEN = "abuse-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def tcp_node(tiny_models: dict[str, Path]) -> Iterator[tuple[NodeThread, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    (tmp / "token").write_text(TOKEN + "\n")
    cfg = node_config(tmp, str(tiny_models["llama"]))
    cfg = replace(cfg, api=replace(cfg.api, listen="127.0.0.1:0", token_file=tmp / "token", max_sessions_per_client=2))
    node = start_node(cfg)
    host, port = node.node.api.tcp_address  # type: ignore[misc]
    yield node, f"http://{host}:{port}"
    node.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def check_error(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["code"], str)


def test_random_bytes_get_a_clear_4xx(tcp_node: tuple[NodeThread, str]) -> None:
    _, base = tcp_node
    rng = random.Random(0)
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as c:
        for _ in range(60):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 2000)))
            check_error(c.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}))
        check_error(c.post("/v1/chat/completions", content=b"{" * 200_000))  # over the 64 KiB body limit
        r = c.post("/v1/completions", content=b"x" * 200_000)
        assert r.status_code == 413
        for body in ({"prompt": "hi", "max_tokens": 10**12}, {"prompt": "hi", "max_tokens": -1},
                     {"prompt": ["a", 3]}, {"prompt": [2**40]}, {"prompt": "hi", "temperature": "hot"},
                     {"messages": [{"role": "root", "content": "x"}]}, {"prompt": "hi", "stream": "yes"},
                     {"prompt": "hi", "n": 10**9}, {"prompt": "hi", "model": "gpt-17"}, [], "prompt", 7):
            check_error(c.post("/v1/completions", json=body))
        for route in ("/v1/swarm/ban", "/v1/swarm/drain"):  # administration: the Unix socket only
            r = c.post(route, json={"node_id": "test-node"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = st.sampled_from(["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                          "stream", "stream_options", "model", "n", "logprobs", "echo", "user"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(FIELDS, JSON, max_size=6), st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_any_json_fields_get_an_answer_or_a_4xx(tcp_node: tuple[NodeThread, str], body: dict[str, Any],
                                                route: str) -> None:
    _, base = tcp_node
    if "max_tokens" not in body:
        body["max_tokens"] = 2  # valid requests stay short
    try:
        payload = json.dumps(body, allow_nan=True)
    except ValueError:
        return
    r = httpx.post(base + route, content=payload, headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    if r.status_code == 200:
        return  # a valid request: answered
    check_error(r)


def test_one_client_holds_at_most_its_share_of_generations(tcp_node: tuple[NodeThread, str]) -> None:
    node, base = tcp_node
    started = threading.Barrier(3)
    results: list[int] = []

    def hold() -> None:  # a long streaming generation, read slowly
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 200, "stream": True,
                                                           "temperature": 0}) as r:
                results.append(r.status_code)
                lines = r.iter_lines()
                next(lines)
                started.wait(30)
                started.wait(30)  # until the third request was answered
                for _ in lines:
                    pass

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    started.wait(30)
    r = httpx.post(base + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=AUTH, timeout=30)
    started.wait(30)
    for t in holders:
        t.join(60)
    assert results == [200, 200]
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "rate_limited"
    # The socket's local users are not counted against the TCP client, and the share frees up afterwards.
    r = httpx.post(base + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    with httpx.Client(transport=httpx.HTTPTransport(uds=node.socket), timeout=30) as c:
        assert c.post("http://x/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
