"""OpenAI-compatible completion and chat routes, streaming (server-sent events) and not."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from aiohttp import web

from ..errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    ShuttingDown,
    SwarmdError,
    TooManyRequests,
)
from ..ring.generation import Generation
from ..types import GenerationRequest
from .errors import error_payload
from .requests import Kind, ParsedRequest, parse_body, parse_request

log = logging.getLogger(__name__)


class Codec(Protocol):
    eos_ids: frozenset[int]

    def encode(self, text: str) -> list[int]: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def decode(self, ids: Any) -> str: ...
    def check_ids(self, ids: list[int]) -> None: ...


class Backend(Protocol):
    """What the routes need from the node."""

    model_name: str
    accepting: bool

    @property
    def codec(self) -> Codec | None: ...
    @property
    def max_context(self) -> int: ...
    def can_serve(self) -> bool: ...
    def new_generation(self, request: GenerationRequest) -> Generation: ...
    def session_started(self) -> None: ...
    def session_ended(self) -> None: ...
    def request_drain(self) -> dict[str, object]: ...
    def ban(self, node_id: str) -> dict[str, object]: ...
    async def doctor(self) -> dict[str, Any]: ...


class ClientLimits:
    """Generations in flight per client of the TCP listener (by address), and the slow-reader deadline."""

    def __init__(self, per_client: int, write_timeout_s: float) -> None:
        self.per_client = per_client
        self.write_timeout_s = write_timeout_s
        self.active: dict[str, int] = {}

    @staticmethod
    def client_of(request: web.Request) -> str | None:
        """The client's address on the TCP listener; None on the Unix socket (local users are trusted)."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return str(peer[0]) if isinstance(peer, tuple) else None

    def enter(self, client: str | None) -> None:
        if client is None:
            return
        if self.active.get(client, 0) >= self.per_client:
            err = TooManyRequests(f"client {client} already runs {self.per_client} generations (the limit)")
            err.retry_after_s = 1
            raise err
        self.active[client] = self.active.get(client, 0) + 1

    def leave(self, client: str | None) -> None:
        if client is not None:
            left = self.active.get(client, 1) - 1
            if left > 0:
                self.active[client] = left
            else:
                self.active.pop(client, None)


class Tracker(Protocol):
    """One request's metrics (node_metrics.RequestTrack)."""

    def running(self, prompt_tokens: int) -> None: ...
    def token(self) -> None: ...
    def end(self, finished_reason: str | None, error_code: str | None = None) -> None: ...


class Metrics(Protocol):
    def request(self) -> Tracker: ...


BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)  # type: ignore[type-abstract]
METRICS: web.AppKey[Metrics | None] = web.AppKey("metrics", object)  # type: ignore[arg-type]
CLIENTS: web.AppKey[ClientLimits] = web.AppKey("clients", ClientLimits)
DEFAULT_MAX_TOKENS: web.AppKey[int] = web.AppKey("default_max_tokens", int)


def _build(backend: Backend, parsed: ParsedRequest, default_max: int) -> GenerationRequest:
    if parsed.model is not None and parsed.model != backend.model_name:
        raise ModelNotFound(f"model {parsed.model!r} does not exist; this swarm serves {backend.model_name!r}")
    codec = backend.codec
    if codec is None or not backend.can_serve():
        raise NotReady("this node cannot serve yet (model loading or no full route)")
    if parsed.kind == "chat":
        assert parsed.messages is not None
        prompt_ids = codec.encode_chat(parsed.messages)
    elif isinstance(parsed.prompt, str):
        prompt_ids = codec.encode(parsed.prompt)
    else:
        assert parsed.prompt is not None
        prompt_ids = list(parsed.prompt)
        codec.check_ids(prompt_ids)
    context = backend.max_context
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty", "prompt")
    room = context - len(prompt_ids)
    if room < 1:
        raise ContextLengthExceeded(
            f"the prompt has {len(prompt_ids)} tokens; the model's context is {context} tokens")
    if parsed.max_tokens is None:
        max_tokens = min(default_max, room)
    elif parsed.max_tokens > room:
        raise ContextLengthExceeded(
            f"max_tokens {parsed.max_tokens} plus the prompt's {len(prompt_ids)} tokens exceed the "
            f"context of {context} tokens", "max_tokens")
    else:
        max_tokens = parsed.max_tokens
    return GenerationRequest(tuple(prompt_ids), max_tokens, parsed.sampling, parsed.stop, codec.eos_ids)


def _usage(g: Generation) -> dict[str, int]:
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def _choice(kind: Kind, text: str | None, finish: str | None, first: bool = False,
            final_message: bool = False) -> dict[str, Any]:
    if kind == "completion":
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if final_message:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def _handle(request: web.Request, kind: Kind) -> web.StreamResponse:
    backend = request.app[BACKEND]
    if not backend.accepting:
        raise ShuttingDown("this node is shutting down")
    parsed = parse_request(kind, parse_body(await request.read()))
    gen_req = _build(backend, parsed, request.app[DEFAULT_MAX_TOKENS])
    limits, client = request.app[CLIENTS], ClientLimits.client_of(request)
    limits.enter(client)
    try:
        generation = backend.new_generation(gen_req)
        backend.session_started()
    except BaseException:
        limits.leave(client)
        raise
    metrics = request.app.get(METRICS)
    track = metrics.request() if metrics is not None else None
    if track is not None:
        generation.on_token = track.token
    try:
        async with generation:
            if track is not None:
                track.running(generation.prompt_tokens)
            if parsed.stream:
                return await _stream(request, kind, parsed, generation, backend.model_name, track)
            text = []
            async for delta in generation.stream():
                text.append(delta)
                if _gone(request):
                    log.info("client left; session %s freed", generation.session_id)
                    if track is not None:
                        track.end(None, "client_gone")
                    break
            finish = generation.finish_reason.value if generation.finish_reason else "stop"
            if track is not None:
                track.end(finish)
            obj = "text_completion" if kind == "completion" else "chat.completion"
            prefix = "cmpl" if kind == "completion" else "chatcmpl"
            return web.json_response({
                "id": f"{prefix}-{generation.session_id}", "object": obj, "created": int(time.time()),
                "model": backend.model_name,
                "choices": [_choice(kind, "".join(text), finish, final_message=True)],
                "usage": _usage(generation),
            })
    except SwarmdError as exc:
        if track is not None:
            track.end(None, exc.code)
        raise
    finally:
        if track is not None:
            track.end(None, "aborted")  # no-op when it already ended
        backend.session_ended()
        limits.leave(client)


async def _stream(
    request: web.Request, kind: Kind, parsed: ParsedRequest, generation: Generation, model: str,
    track: Tracker | None = None,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
    base = {"id": f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{generation.session_id}", "object": obj,
            "created": int(time.time()), "model": model}

    write_timeout = request.app[CLIENTS].write_timeout_s

    async def send(payload: dict[str, Any]) -> None:
        try:  # a client that stops reading is dropped, never waited for with a session held
            async with asyncio.timeout(write_timeout):
                await resp.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
        except TimeoutError:
            raise ConnectionResetError(f"client read nothing for {write_timeout:g}s") from None

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out = dict(base, choices=choices)
        if parsed.include_usage:
            out["usage"] = usage
        return out

    try:
        if kind == "chat":
            await send(chunk([_choice(kind, "", None, first=True)]))
        async for delta in generation.stream():
            await send(chunk([_choice(kind, delta, None)]))
        finish = generation.finish_reason.value if generation.finish_reason else "stop"
        await send(chunk([_choice(kind, None if kind == "chat" else "", finish)]))
        if parsed.include_usage:
            await send(chunk([], _usage(generation)))
        if track is not None:
            track.end(finish)
    except (ConnectionResetError, BrokenPipeError) as exc:
        log.info("client left mid-stream (%s); session %s freed", exc, generation.session_id)
        if track is not None:
            track.end(None, "client_gone")
        if request.transport is not None:
            request.transport.close()
        return resp
    except SwarmdError as exc:  # headers are gone: report in-band, then end the stream
        log.warning("session %s failed: %s", generation.session_id, exc.message)
        if track is not None:
            track.end(None, exc.code)
        await send(error_payload(exc.message, exc.type, exc.code))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "chat")


async def models(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    return web.json_response({"object": "list", "data": [
        {"id": backend.model_name, "object": "model", "created": 0, "owned_by": "swarmd"}]})
