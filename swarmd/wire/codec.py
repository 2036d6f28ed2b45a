"""Encode and decode messages. The only module that imports msgpack.

Body layout: a msgpack array ``[tag, field1, field2, ...]`` in dataclass field order; nested
``Hop`` and ``TensorBlob`` values are arrays too; maps are never used (the parser rejects any map with
entries; an empty map fails the field checks). Decoding
checks the per-type size cap from the first two bytes before the body is parsed, bounds msgpack by
the body length, then checks every field's type and range.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import DecodeError
from ..types import TensorBlob
from .messages import CATALOGUE, Hop, MemberUpdate, Message, NodeMeta, SpanState

TENSOR_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
MAX_STR = 4096
MAX_DIMS = 4
MAX_DIM = 1 << 31
INT_MIN, INT_MAX = -1, (1 << 63) - 1

Validator = Callable[[Any, str], Any]


# --- encoding ------------------------------------------------------------------------------------


STRUCTS = (Hop, TensorBlob, MemberUpdate, SpanState)


def _plain(value: Any) -> Any:
    if isinstance(value, STRUCTS):
        return [_plain(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode(msg: Message) -> bytes:
    fields = [_plain(getattr(msg, f.name)) for f in dataclasses.fields(msg)]  # type: ignore[arg-type]
    return msgpack.packb([msg.TAG, *fields], use_bin_type=True)


# --- decoding ------------------------------------------------------------------------------------


def peek_tag(body: bytes) -> int:
    """The message tag from the first bytes: an array header (``fixarray``, or ``array16`` for messages
    of 15 fields or more), then a positive fixint."""
    at = 3 if body[:1] == b"\xdc" else 1
    if len(body) <= at or (at == 1 and body[0] & 0xF0 != 0x90) or body[at] > 0x7F:
        raise DecodeError("frame does not start with a message header", "header")
    return body[at]


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not INT_MIN <= v <= INT_MAX:
        raise DecodeError(f"{where}: expected an integer in [{INT_MIN}, 2^63)", "fields")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DecodeError(f"{where}: expected a finite number", "fields")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise DecodeError(f"{where}: expected a boolean", "fields")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_STR:
        raise DecodeError(f"{where}: expected a string of at most {MAX_STR} characters", "fields")
    return v


def _bytes(v: Any, where: str) -> bytes:
    if not isinstance(v, bytes):
        raise DecodeError(f"{where}: expected bytes", "fields")
    return v


def _struct(cls: type, parts: list[Validator]) -> Validator:
    def check(v: Any, where: str) -> Any:
        if not isinstance(v, list) or len(v) != len(parts):
            raise DecodeError(f"{where}: expected {cls.__name__} with {len(parts)} fields", "fields")
        return cls(*(p(x, f"{where}[{i}]") for i, (p, x) in enumerate(zip(parts, v, strict=True))))

    return check


def _tensor(v: Any, where: str) -> TensorBlob:
    if not isinstance(v, list) or len(v) != 3:
        raise DecodeError(f"{where}: expected a tensor [dtype, shape, data]", "tensor")
    dtype, shape, data = v
    if not isinstance(dtype, str) or dtype not in TENSOR_DTYPES:
        raise DecodeError(f"{where}: tensor dtype must be one of {sorted(TENSOR_DTYPES)}", "tensor")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in shape)):
        raise DecodeError(f"{where}: tensor shape must be 1-{MAX_DIMS} positive dimensions", "tensor")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * TENSOR_DTYPES[dtype]:
        raise DecodeError(f"{where}: tensor bytes do not match dtype {dtype} and shape {shape}", "tensor")
    return TensorBlob(dtype, tuple(shape), data)


def _tuple_of(item: Validator) -> Validator:
    def check(v: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise DecodeError(f"{where}: expected a list", "fields")
        return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))

    return check


def _optional(inner: Validator) -> Validator:
    return lambda v, where: None if v is None else inner(v, where)


def _validator(tp: Any) -> Validator:
    simple: dict[Any, Validator] = {int: _int, float: _float, bool: _bool, str: _str, bytes: _bytes,
                                    TensorBlob: _tensor}
    if tp in simple:
        return simple[tp]
    if tp in (Hop, MemberUpdate, SpanState):
        return _struct(tp, [_validator(t) for t in typing.get_type_hints(tp).values()])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_of(_validator(args[0]))
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(_validator(inner))
    raise TypeError(f"no wire type for {tp!r}")


def _schema(cls: type[Message]) -> list[Validator]:
    hints = typing.get_type_hints(cls)
    return [_validator(hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


SCHEMAS: dict[int, tuple[type[Message], list[Validator]]] = {tag: (cls, _schema(cls)) for tag, cls in CATALOGUE.items()}
META_SCHEMA: list[Validator] = [_validator(typing.get_type_hints(NodeMeta)[f.name])
                                for f in dataclasses.fields(NodeMeta)]


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed", "msgpack")


def _unpack(body: bytes) -> Any:
    """One msgpack value filling ``body`` exactly, bounded by its length; no maps, no extension types."""
    n = len(body)
    try:
        unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, max_buffer_size=max(n, 1), max_str_len=n,
            max_bin_len=n, max_array_len=n, max_map_len=0, max_ext_len=0, ext_hook=_no_ext,
        )
        unpacker.feed(body)
        value = unpacker.unpack()
        if unpacker.tell() != n:
            raise DecodeError(f"{n - unpacker.tell()} bytes of trailing garbage after the message", "msgpack")
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise DecodeError(f"invalid msgpack: {type(exc).__name__}: {exc}", "msgpack") from None
    return value


def encode_meta(meta: NodeMeta) -> bytes:
    """``NodeMeta`` as gossip carries it: ``[VERSION, field1, ...]``; raises ValueError above its cap."""
    fields = [_plain(getattr(meta, f.name)) for f in dataclasses.fields(meta)]
    body = msgpack.packb([NodeMeta.VERSION, *fields], use_bin_type=True)
    try:
        decode_meta(body)  # publish nothing a peer would refuse (size, non-finite speed, bad types)
    except DecodeError as exc:
        raise ValueError(f"node meta not publishable: {exc}") from None
    return body


def decode_meta(body: bytes) -> NodeMeta:
    """The inverse of ``encode_meta``, with the same checks as a message (a newer VERSION is refused)."""
    if len(body) > NodeMeta.CAP:
        raise DecodeError(f"node meta of {len(body)} bytes exceeds {NodeMeta.CAP}", "oversized")
    value = _unpack(body)
    if (not isinstance(value, list) or len(value) != len(META_SCHEMA) + 1 or type(value[0]) is not int
            or value[0] != NodeMeta.VERSION):
        raise DecodeError(f"node meta: expected version {NodeMeta.VERSION} with {len(META_SCHEMA)} fields", "fields")
    names = [f.name for f in dataclasses.fields(NodeMeta)]
    meta = NodeMeta(*(check(v, f"NodeMeta.{name}") for check, v, name in zip(META_SCHEMA, value[1:], names,
                                                                             strict=True)))
    if len(meta.quarantined) > NodeMeta.MAX_QUARANTINED or len(meta.banned) > NodeMeta.MAX_BANNED:
        raise DecodeError(f"node meta: at most {NodeMeta.MAX_QUARANTINED} quarantines and "
                          f"{NodeMeta.MAX_BANNED} bans", "fields")
    if not all(len(fp) == 16 and all(c in "0123456789abcdef" for c in fp) for fp in meta.banned):
        raise DecodeError("node meta: a ban is a 16-digit lower-case hex key fingerprint", "fields")
    return meta


def encode_attestation(node_id: str, addr: str, incarnation: int, meta_version: int, meta: bytes, left: bool) -> bytes:
    """What a member signs about its own gossip record (``wire/identity.py``): a label, then a msgpack array."""
    return b"swarmd-attest-v1\0" + msgpack.packb([node_id, addr, incarnation, meta_version, meta, left],
                                                 use_bin_type=True)


def decode(body: bytes, allowed: frozenset[int] | None = None) -> Message:
    """Decode one frame body into its message; ``allowed`` limits the tags accepted in this state."""
    tag = peek_tag(body)
    entry = SCHEMAS.get(tag)
    if entry is None:
        raise DecodeError(f"unknown message tag {tag}", "unknown_tag")
    if allowed is not None and tag not in allowed:
        raise DecodeError(f"message {entry[0].__name__} is not allowed here", "unexpected")
    cls, schema = entry
    if len(body) > cls.CAP:
        raise DecodeError(f"{cls.__name__} of {len(body)} bytes exceeds its cap of {cls.CAP}", "oversized")
    value = _unpack(body)
    if not isinstance(value, list) or len(value) != len(schema) + 1:
        raise DecodeError(f"{cls.__name__}: expected {len(schema)} fields", "fields")
    fields = [check(v, f"{cls.__name__}.{f.name}")
              for check, v, f in zip(schema, value[1:], dataclasses.fields(cls), strict=True)]  # type: ignore[arg-type]
    return cls(*fields)
