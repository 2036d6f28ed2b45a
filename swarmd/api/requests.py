"""Validate OpenAI completion and chat request bodies into typed values. Pure: no I/O, no model.

Unknown fields and ill-typed values are 400s that name the field, as the OpenAI API does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequest
from ..types import SamplingParams

MAX_STOP = 4
MAX_MESSAGES = 4096
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

Kind = Literal["completion", "chat"]

_COMMON = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "n",
    "user", "presence_penalty", "frequency_penalty", "logit_bias",
}
_CHAT_ONLY = {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format",
              "parallel_tool_calls", "store", "metadata"}
_COMPLETION_ONLY = {"prompt", "echo", "suffix", "best_of", "logprobs"}


@dataclass(frozen=True)
class ParsedRequest:
    kind: Kind
    model: str | None
    prompt: str | list[int] | None  # completion
    messages: list[dict[str, str]] | None  # chat, content flattened to text
    max_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _num(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidRequest(f"'{key}' must be a number", key)
    if not lo <= v <= hi:
        raise InvalidRequest(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return float(v)


def _int(body: dict[str, Any], key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"'{key}' must be an integer", key)
    if lo is not None and v < lo:
        raise InvalidRequest(f"'{key}' must be at least {lo}, got {v}", key)
    return v


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InvalidRequest(f"'{key}' must be a boolean", key)
    return v


def _unsupported(body: dict[str, Any], key: str, allowed: tuple[object, ...]) -> None:
    if key in body and body[key] not in allowed:
        raise InvalidRequest(f"'{key}' = {body[key]!r} is not supported by this server", key)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest("'stop' must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise InvalidRequest(f"'stop' takes at most {MAX_STOP} strings", "stop")
    return tuple(s for s in items if s)


def _content(value: Any, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise InvalidRequest(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    if value is None:
        return ""
    raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise InvalidRequest("'messages' must be a non-empty list", "messages")
    if len(msgs) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' holds more than {MAX_MESSAGES} entries", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role must be one of {sorted(ROLES)}", "messages")
        out.append({"role": role, "content": _content(m.get("content"), i)})
    return out


def _prompt(body: dict[str, Any]) -> str | list[int]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    raise InvalidRequest("'prompt' must be a string, a list of token ids, or a list of one of those", "prompt")


def parse_request(kind: Kind, body: dict[str, Any]) -> ParsedRequest:
    allowed = _COMMON | (_CHAT_ONLY if kind == "chat" else _COMPLETION_ONLY)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", "model")
    _unsupported(body, "n", (1, None))
    _unsupported(body, "best_of", (1, None))
    _unsupported(body, "echo", (False, None))
    _unsupported(body, "suffix", (None, ""))
    _unsupported(body, "logprobs", (False, None))
    _unsupported(body, "top_logprobs", (None, 0))
    _unsupported(body, "presence_penalty", (0, 0.0, None))
    _unsupported(body, "frequency_penalty", (0, 0.0, None))
    _unsupported(body, "logit_bias", (None, {}))
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise InvalidRequest("only response_format {'type': 'text'} is supported", "response_format")
    for key in ("user",):
        if key in body and body[key] is not None and not isinstance(body[key], str):
            raise InvalidRequest(f"'{key}' must be a string", key)
    max_tokens = _int(body, "max_tokens", lo=1)
    if kind == "chat":
        mct = _int(body, "max_completion_tokens", lo=1)
        max_tokens = mct if mct is not None else max_tokens
    stream = _bool(body, "stream")
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict) or set(so) - {"include_usage", "continuous_usage_stats"}:
            raise InvalidRequest("'stream_options' must be an object with 'include_usage'", "stream_options")
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = _bool(so, "include_usage")
    seed = _int(body, "seed")
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise InvalidRequest("'seed' must fit in 64 bits", "seed")
    sampling = SamplingParams(
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0),
        top_k=_int(body, "top_k", lo=0) or 0,
        seed=None if seed is None else seed % (2**63),
    )
    return ParsedRequest(
        kind=kind, model=model,
        prompt=_prompt(body) if kind == "completion" else None,
        messages=_messages(body) if kind == "chat" else None,
        max_tokens=max_tokens, sampling=sampling, stop=_stop(body), stream=stream, include_usage=include_usage,
    )
