"""Every bad request gets a 4xx OpenAI-style error, and the node keeps serving others."""

from __future__ import annotations

import pytest
from helpers import NodeThread, uds_client

GOOD = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0}


def error_of(resp) -> dict:  # type: ignore[no-untyped-def]
    body = resp.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("route", "payload", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", b"\xff\xfe", 400, "not valid JSON"),
        ("/v1/completions", {**GOOD, "max_tokens": "4"}, 400, "max_tokens"),
        ("/v1/completions", {**GOOD, "temperature": "hot"}, 400, "temperature"),
        ("/v1/completions", {**GOOD, "stream": "yes"}, 400, "stream"),
        ("/v1/completions", {**GOOD, "bogus": 1}, 400, "bogus"),
        ("/v1/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {**GOOD, "max_tokens": -5}, 400, "max_tokens"),
        ("/v1/completions", {**GOOD, "max_tokens": 100000}, 400, "context"),
        ("/v1/completions", {**GOOD, "prompt": [5] * 600}, 400, "context"),
        ("/v1/completions", {**GOOD, "prompt": [10**9]}, 400, "vocabulary"),
        ("/v1/completions", {**GOOD, "prompt": 42}, 400, "prompt"),
        ("/v1/completions", {**GOOD, "n": 3}, 400, "n"),
        ("/v1/completions", {**GOOD, "model": "gpt-4"}, 404, "gpt-4"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, 400,
         "max_tokens"),
    ],
)
def test_bad_request_gets_clear_error(llama_node: NodeThread, route: str, payload, status: int,  # type: ignore[no-untyped-def]
                                      needle: str) -> None:
    with uds_client(llama_node.socket) as c:
        kw = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
        r = c.post(route, **kw)
        assert r.status_code == status, r.text
        assert needle in error_of(r)["message"]
        # ... and the node still serves the next request.
        assert c.post("/v1/completions", json=GOOD).status_code == 200


def test_body_over_limit_is_413(llama_node: NodeThread) -> None:
    with uds_client(llama_node.socket) as c:
        r = c.post("/v1/completions", json={**GOOD, "prompt": "x" * 100_000})
        assert r.status_code == 413
        assert error_of(r)["code"] == "request_too_large"
        assert c.post("/v1/completions", json=GOOD).status_code == 200


def test_unknown_route_and_method(llama_node: NodeThread) -> None:
    with uds_client(llama_node.socket) as c:
        assert c.get("/v1/nothing").status_code == 404
        error_of(c.get("/v1/nothing"))
        r = c.get("/v1/completions")
        assert r.status_code in (404, 405)
        error_of(r)
