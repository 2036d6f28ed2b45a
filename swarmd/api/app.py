"""Build the aiohttp application and serve it on the Unix socket (and an optional TCP listener)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import ApiConfig, parse_hostport
from ..errors import ConfigError, Forbidden, InvalidRequest
from . import openai_routes
from .errors import MAX_BODY_BYTES, bearer_middleware, error_middleware, json_error

log = logging.getLogger(__name__)

METRICS_TEXT: web.AppKey[Callable[[], str]] = web.AppKey("metrics_text", Callable[[], str])  # type: ignore[arg-type]
STATUS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("status", Callable[[], dict[str, Any]])  # type: ignore[arg-type]


async def health(request: web.Request) -> web.Response:
    backend = request.app[openai_routes.BACKEND]
    if backend.can_serve():
        return web.json_response({"status": "ok"})
    state = request.app[STATUS]().get("state", "starting")
    return web.json_response({"status": state}, status=503, headers={"Retry-After": "1"})


async def swarm_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATUS]())


def local_only(request: web.Request) -> None:
    """Administration (drain, ban) is for the node's operator: the Unix socket, never the TCP listener."""
    if openai_routes.ClientLimits.client_of(request) is not None:
        raise Forbidden(f"{request.path} is served on the local Unix socket only")


async def drain(request: web.Request) -> web.Response:
    """Start a graceful leave (the same path as SIGTERM); answers at once."""
    local_only(request)
    return web.json_response(request.app[openai_routes.BACKEND].request_drain(), status=202)


async def ban(request: web.Request) -> web.Response:
    """Ban a member by identity: ``{"node_id": "..."}``; the ban spreads through the swarm."""
    local_only(request)
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the body must be JSON: {\"node_id\": \"...\"}") from None
    node_id = body.get("node_id") if isinstance(body, dict) else None
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 256:
        raise InvalidRequest("node_id must be a non-empty string of at most 256 characters")
    return web.json_response(request.app[openai_routes.BACKEND].ban(node_id))


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus text exposition (version 0.0.4)."""
    render = request.app[METRICS_TEXT]
    return web.Response(body=render().encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def doctor(request: web.Request) -> web.Response:
    """``swarmctl doctor``: this node's checks (interfaces, mDNS, a handshake with every known address)."""
    local_only(request)
    return web.json_response(await request.app[openai_routes.BACKEND].doctor())


async def not_found(request: web.Request) -> web.Response:
    return json_error(404, f"no route {request.method} {request.path}", code="not_found")


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"API token in {path} is shorter than 16 characters")
    return token


def build_app(cfg: ApiConfig, backend: openai_routes.Backend, status: Callable[[], dict[str, Any]],
              metrics: Any = None) -> web.Application:
    """``metrics``: a ``node_metrics.NodeMetrics`` (``request()`` per generation, ``render()`` for /metrics)."""
    middlewares: list[Any] = [error_middleware]
    if cfg.listen:
        if cfg.token_file is None:
            raise ConfigError("--api-listen needs --api-token-file: the TCP listener requires a bearer token")
        middlewares.append(bearer_middleware(read_token(cfg.token_file)))
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=middlewares)
    app[openai_routes.BACKEND] = backend
    app[openai_routes.DEFAULT_MAX_TOKENS] = cfg.default_max_tokens
    app[openai_routes.CLIENTS] = openai_routes.ClientLimits(cfg.max_sessions_per_client, cfg.client_write_timeout_s)
    app[STATUS] = status
    app[openai_routes.METRICS] = metrics
    app[METRICS_TEXT] = metrics.render if metrics is not None else (lambda: "")
    app[MAX_BODY_BYTES] = cfg.max_body_bytes
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", openai_routes.models)
    app.router.add_post("/v1/completions", openai_routes.completions)
    app.router.add_post("/v1/chat/completions", openai_routes.chat_completions)
    app.router.add_get("/v1/swarm/status", swarm_status)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_post("/v1/swarm/drain", drain)
    app.router.add_post("/v1/swarm/ban", ban)
    app.router.add_get("/v1/swarm/doctor", doctor)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class ApiServer:
    """Owns the runner and its sites; ``stop`` closes listeners first, then waits for open requests."""

    def __init__(self, cfg: ApiConfig, app: web.Application, shutdown_timeout: float) -> None:
        self.cfg = cfg
        self.runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None,
                                    handle_signals=False)
        self.tcp_address: tuple[str, int] | None = None

    async def start(self) -> None:
        await self.runner.setup()
        path = self.cfg.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            _remove_stale_socket(path)
        site = web.UnixSite(self.runner, str(path))
        await site.start()
        os.chmod(path, 0o660)
        log.info("API listening on unix:%s", path)
        if self.cfg.listen:
            host, port = parse_hostport(self.cfg.listen)
            tcp = web.TCPSite(self.runner, host, port)
            await tcp.start()
            server = tcp._server  # noqa: SLF001 - aiohttp exposes no public accessor for the bound port
            sock = server.sockets[0] if server is not None and server.sockets else None  # type: ignore[attr-defined]
            self.tcp_address = sock.getsockname()[:2] if sock else (host, port)
            log.info("API listening on tcp:%s:%d (bearer token required)", *self.tcp_address)

    async def stop(self) -> None:
        await self.runner.cleanup()
        try:
            self.cfg.socket.unlink()
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: Path) -> None:
    """Refuse to start over a live daemon; remove a socket file left by a dead one."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(f"another swarmd is already serving on {path}")
