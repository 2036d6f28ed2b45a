"""OpenAI-style JSON errors and the middleware that turns every failure into one."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import CapacityError, SwarmdError

log = logging.getLogger(__name__)

MAX_BODY_BYTES: web.AppKey[int] = web.AppKey("max_body_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_payload(message: str, type_: str, code: str, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def json_error(
    status: int, message: str, *, type_: str = "invalid_request_error", code: str = "invalid_request",
    param: str | None = None, retry_after: int | None = None,
) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(error_payload(message, type_, code, param), status=status, headers=headers)


def from_exception(exc: SwarmdError) -> web.Response:
    retry = exc.retry_after_s if isinstance(exc, CapacityError) else None
    return json_error(exc.status, exc.message, type_=exc.type, code=exc.code,
                      param=getattr(exc, "param", None), retry_after=retry)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 401: "unauthorized"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SwarmdError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return from_exception(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body too large (limit {request.app[MAX_BODY_BYTES]} bytes)"
        return json_error(exc.status, message, code=_HTTP_CODES.get(exc.status, "http_error"))
    except (ConnectionResetError, BrokenPipeError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal server error", type_="server_error", code="internal_error")


def bearer_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer <token>`` on TCP connections; Unix-socket peers are trusted."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):  # TCP listener
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                resp = json_error(401, "missing or wrong bearer token", code="unauthorized")
                resp.headers["WWW-Authenticate"] = "Bearer"
                return resp
        return await handler(request)

    return check
