"""A tiny HTTP/1.1 client over a Unix socket on the standard library (swarmctl stays fast: no aiohttp, no torch)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request_json(path: str, method: str, route: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    conn = UnixHTTPConnection(path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, route, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, {"error": {"message": raw.decode(errors="replace")}}
    finally:
        conn.close()


def stream_events(path: str, route: str, body: Any, timeout: float = 600.0) -> Iterator[dict[str, Any]]:
    """POST and yield each server-sent event's JSON; raises RuntimeError with the server's error message."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("POST", route, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raw = resp.read()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")
            raise RuntimeError(f"HTTP {resp.status}: {message}")
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "stream failed"))
            yield event
    finally:
        conn.close()
