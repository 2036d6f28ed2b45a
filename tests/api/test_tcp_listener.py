"""The optional TCP listener serves the same API but only with the bearer token."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from helpers import node_config, start_node

from swarmd.errors import ConfigError

TOKEN = "s3cret-token-0123456789abcdef"


def test_bearer_token_required_on_tcp(tiny_models: dict[str, Path]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = node_config(tmp, str(tiny_models["llama"]))
    cfg = replace(cfg, api=replace(cfg.api, listen="127.0.0.1:0", token_file=token_file))
    node = start_node(cfg)
    try:
        host, port = node.node.api.tcp_address  # type: ignore[misc]
        base = f"http://{host}:{port}"
        body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0}
        r = httpx.post(f"{base}/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert httpx.get(f"{base}/health").status_code == 401
        r = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        # The Unix socket stays open to local users without a token.
        with httpx.Client(transport=httpx.HTTPTransport(uds=node.socket)) as c:
            assert c.get("http://x/health").status_code == 200
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_tcp_listener_without_token_file_is_refused(tiny_models: dict[str, Path]) -> None:
    from swarmd.node import Node

    cfg = node_config(Path("/tmp/unused"), str(tiny_models["llama"]))
    with pytest.raises(ConfigError, match="api-token-file"):
        Node(replace(cfg, api=replace(cfg.api, listen="127.0.0.1:0")))
