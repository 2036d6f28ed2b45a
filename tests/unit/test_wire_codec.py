"""wire/codec.py: every message round-trips; hostile bodies raise DecodeError with the right reason, nothing else."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd.errors import DecodeError, ProtocolError
from swarmd.types import TensorBlob
from swarmd.wire.codec import decode, encode, peek_tag
from swarmd.wire.messages import (
    CATALOGUE,
    HANDSHAKE_TAGS,
    AuditSample,
    ClientAuth,
    ClientHello,
    Forward,
    Gossip,
    Hello,
    Hop,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
    Pong,
    PushPull,
    ServerHello,
    SessionAccepted,
    SessionClose,
    SessionError,
    SessionOpen,
    SwimAck,
    SwimPing,
    TokenOut,
)

CHAIN = (Hop("a", "10.0.0.1:7000", 0, 6), Hop("b", "10.0.0.2:7000", 6, 12))
EXAMPLES: list[Message] = [
    ClientHello(1, (b"\x01" * 8, b"\x02" * 8), b"n" * 32),
    ClientHello(1, (), b"n" * 32),
    ServerHello(1, b"k" * 8, b"s" * 32, b"m" * 32),
    ClientAuth(b"m" * 32),
    Hello("node-a", "10.0.0.1:7000", "swarmd/0.1", "tiny-llama", 12, 64, -1, -1, "cpu"),
    Hello("node-b", "10.0.0.2:7000", "swarmd/0.2", "tiny-llama", 12, 64, 0, 6, "cuda:0", b"i" * 32, b"p" * 64,
          wall_ms=1_800_000_000_000, mdns=True),
    Ping(2**63 - 1),
    Pong(0),
    SessionOpen("ab" * 16, Hop("e", "10.0.0.9:7000", 0, 0), CHAIN, 1, 128, 5, 10, 0.7, 0.9, 40, 1234, (2, 3)),
    SessionOpen("s", Hop("e", "", 0, 0), (), 0, 1, 1, 1, 0.0, 1.0, 0, -1, ()),
    SessionOpen("s", Hop("e", "", 0, 0), CHAIN, 0, 9, 1, 1, 0.0, 1.0, 0, 5, (), 1, Hop("v", "10.0.0.5:1", 6, 12), True,
                2**62),
    SessionAccepted("s", "node-b"),
    SessionError("s", "node-b", "kv_budget_exceeded", "füll ✓", 1.5),
    Forward("s", 0, 3, True, (1, 2, 3), None),
    Forward("s", 7, 8, False, (), TensorBlob("float16", (1, 2, 4), bytes(range(16)))),
    Forward("s", 7, 8, False, (), TensorBlob("bfloat16", (1, 1, 1, 3), b"\x01" * 6)),
    Forward("s", 7, 8, True, (), TensorBlob("float32", (2,), b"\xff" * 8)),
    TokenOut("s", 4, 42, True),
    AuditSample("s", 3, TensorBlob("float32", (4,), b"\x00" * 16), -1, (), ()),
    AuditSample("s", 3, TensorBlob("float32", (2, 4), b"\x00" * 32), -1, (), ()),
    AuditSample("s", 0, None, 7, (7, 3), (12.5, -1.0)),
    SessionClose("s", "client_gone"),
    SwimPing(7, "a", "10.0.0.1:7000", "b", (MemberUpdate("c", "10.0.0.3:7000", 3, "suspect", 1, b"", "a"),)),
    SwimAck(7, "b", ()),
    PingReq(9, "a", "10.0.0.1:7000", "b", "10.0.0.2:7000", ()),
    PushPull("a", "10.0.0.1:7000", True, True, (MemberUpdate("a", "10.0.0.1:7000", 0, "alive", 4, b"\x93", "a"),)),
    Gossip("a", (MemberUpdate("a", "10.0.0.1:7000", 2, "left", 4, b"", "a"),)),
]
FWD_HEAD: list[Any] = [Forward.TAG, "s", 0, 0, False, []]  # a Forward body up to its ``hidden`` field


def pack(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def reason_of(body: bytes, allowed: frozenset[int] | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        decode(body, allowed)
    assert isinstance(info.value, ProtocolError)
    return info.value.reason


def test_catalogue_is_keyed_by_unique_tags_and_examples_cover_it() -> None:
    assert {type(m) for m in EXAMPLES} == set(CATALOGUE.values())
    assert all(tag == cls.TAG for tag, cls in CATALOGUE.items())
    assert len({cls.TAG for cls in CATALOGUE.values()}) == len(CATALOGUE) == 18
    assert all(0 < tag <= 0x7F for tag in CATALOGUE)  # peek_tag only reads positive fixints
    assert {ClientHello.TAG, ServerHello.TAG, ClientAuth.TAG} == HANDSHAKE_TAGS


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    body = encode(msg)
    assert peek_tag(body) == msg.TAG
    out = decode(body)
    assert type(out) is type(msg)
    assert out == msg  # a list where a tuple (Hop, shape, chain) belongs would compare unequal
    assert [type(getattr(out, f.name)) for f in fields(msg)] == [type(getattr(msg, f.name)) for f in fields(msg)]  # type: ignore[arg-type]
    assert decode(body, frozenset({msg.TAG})) == msg


@pytest.mark.parametrize(
    "body",
    [b"", b"\x92", b"\x0b\x0b", b"\x81\x0b\x00", b"\xdd\x00\x00\x00\x02\x0b", b"\xdc\x00\x10",
     b"\xdc\x00\x10\xcc", b"\x92\xcc\x0b", b"\x92\xff", b"\xa2hi"],
)
def test_peek_tag_rejects_non_array_headers(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        peek_tag(body)
    assert info.value.reason == "header"
    assert reason_of(body) == "header"


@pytest.mark.parametrize("tag", [0, 4, 9, 13, 27, 0x7F])
def test_unknown_tag(tag: int) -> None:
    assert reason_of(pack(tag, 1)) == "unknown_tag"
    assert reason_of(pack(tag, 1), frozenset({tag})) == "unknown_tag"


def test_tag_not_allowed_in_this_state() -> None:
    assert reason_of(encode(Ping(1)), HANDSHAKE_TAGS) == "unexpected"
    assert reason_of(encode(ClientAuth(b"m")), frozenset()) == "unexpected"
    assert decode(encode(ClientAuth(b"m")), HANDSHAKE_TAGS) == ClientAuth(b"m")


@pytest.mark.parametrize("cls", [c for c in CATALOGUE.values() if c.CAP <= 64 * 1024], ids=lambda c: c.__name__)
def test_body_over_the_cap_is_oversized(cls: type[Message]) -> None:
    assert reason_of(pack(cls.TAG, "x" * cls.CAP)) == "oversized"


def test_cap_boundary() -> None:
    pad = next(k for k in range(900, 1100) if len(pack(SessionClose.TAG, "s", "x" * k)) == SessionClose.CAP)
    assert decode(pack(SessionClose.TAG, "s", "x" * pad)) == SessionClose("s", "x" * pad)
    assert reason_of(pack(SessionClose.TAG, "s", "x" * (pad + 1))) == "oversized"


@pytest.mark.parametrize(
    "body",
    [
        bytes([0x92, Ping.TAG, 0xC1]),  # 0xc1 is never used
        encode(Ping(1)) + b"\x00",  # trailing garbage
        encode(SessionClose("s", "bye")) + encode(Ping(1)),  # two messages in one body
        encode(EXAMPLES[7])[:-1],  # truncated
        encode(EXAMPLES[12])[:-5],  # truncated inside the tensor bytes
        bytes([0x93, SessionClose.TAG, 0xA2, 0xFF, 0xFE, 0xA0]),  # invalid UTF-8
        pack(SessionClose.TAG, msgpack.ExtType(5, b"ab"), "x"),
        bytes([0x93, SessionClose.TAG, 0xC7, 0x00, 0x05, 0xA1, 0x78]),  # zero-length ext
        msgpack.packb([SessionClose.TAG, msgpack.Timestamp(1, 0), "x"], datetime=False),
        pack(SessionClose.TAG, {"a": 1}, "x"),  # maps
        pack(*FWD_HEAD, {"dtype": "float32"}),
        bytes([0x93, SessionClose.TAG, 0xDD, 0xFF, 0xFF, 0xFF, 0xFF]),  # array of 2^32 - 1 items in 7 bytes
    ],
)
def test_bad_msgpack(body: bytes) -> None:
    assert reason_of(body) == "msgpack"


def test_empty_map_is_rejected() -> None:
    with pytest.raises(DecodeError):
        decode(pack(SessionClose.TAG, {}, "x"))


def test_empty_map_fails_the_field_checks() -> None:
    """The parser rejects maps with entries; an empty one fails the type check of its field."""
    assert reason_of(pack(SessionClose.TAG, {}, "x")) == "fields"


BAD_FIELDS = [
    pack(Ping.TAG), pack(Ping.TAG, 1, 2),  # wrong arity
    pack(Ping.TAG, "1"), pack(Ping.TAG, True), pack(Ping.TAG, 1.0), pack(Ping.TAG, None),  # bool is not an int
    pack(Ping.TAG, 2**64 - 1), pack(Ping.TAG, 2**63), pack(Ping.TAG, -5), pack(Ping.TAG, -2),
    pack(TokenOut.TAG, "s", 1, 1, 1), pack(TokenOut.TAG, b"s", 1, 1, True),  # int is not a bool, bytes not a str
    pack(ClientAuth.TAG, "mac"), pack(ClientHello.TAG, 1, b"\x01" * 8, b"n"), pack(ClientHello.TAG, 1, ["id"], b""),
    *(pack(SessionError.TAG, "s", "n", "c", "m", x) for x in (float("nan"), float("inf"), float("-inf"), False)),
    pack(SessionError.TAG, "s", "n", "c", "x" * 4097, 1.0),
    pack(Forward.TAG, "s", 0, 0, False, [1, True], None), pack(Forward.TAG, "s", 0, 0, False, [1, 2**64 - 1], None),
    pack(Forward.TAG, "s", 0, 0, "yes", [], None),
]


@pytest.mark.parametrize("body", BAD_FIELDS)
def test_bad_fields(body: bytes) -> None:
    assert reason_of(body) == "fields"


def test_bad_nested_hops() -> None:
    good = [SessionOpen.TAG, "s", ["e", "", 0, 0], [["a", "x", 0, 12]], 0, 1, 1, 1, 0.5, 1.0, 0, 0, [2], -1, None,
            False, 0]
    assert isinstance(decode(pack(*good)), SessionOpen)
    for i, bad in [(2, ["e", "", 0]), (2, None), (3, ["a", "x", 0, 12]), (3, [["a", "x", 0, "12"]]),
                   (3, [["a", "x", 0, 12, 0]]), (12, ["2"]), (8, float("nan")), (14, ["v", "x", 0]),
                   (15, 0)]:
        assert reason_of(pack(*good[:i], bad, *good[i + 1:])) == "fields", (i, bad)


def test_long_strings_are_counted_in_characters() -> None:
    ok = Forward("é" * 4096, 0, 0, False, (), None)  # 8 KiB of UTF-8
    assert decode(encode(ok)) == ok
    assert reason_of(pack(Forward.TAG, "é" * 4097, 0, 0, False, [], None)) == "fields"


Z4, Z8 = b"\x00" * 4, b"\x00" * 8
BAD_TENSORS = [
    ["int8", [4], Z4], [b"float32", [1], Z4], ["float32", [], b""], ["float32", [0], b""], ["float32", [-1], b""],
    ["float32", [1, 1, 1, 1, 1], Z4], ["float32", [2**40], Z4], ["float32", [2**31 + 1], Z4],
    ["float32", [True], Z4], ["float32", [1.0], Z4], ["float32", 1, Z4],
    ["float32", [2], Z4], ["float16", [2], Z8], ["float32", [2], "\x00" * 8],  # byte length, or str for bytes
    ["float32", [2]], ["float32", [2], Z8, 0], "float32",
]


@pytest.mark.parametrize("blob", BAD_TENSORS)
def test_bad_tensor(blob: Any) -> None:
    assert reason_of(pack(*FWD_HEAD, blob)) == "tensor"


@pytest.mark.parametrize("dtype", [[1], {}])
def test_unhashable_tensor_dtype(dtype: Any) -> None:
    assert reason_of(pack(*FWD_HEAD, [dtype, [1], b"\x00" * 4])) == "tensor"


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting(depth: int) -> None:
    with pytest.raises(DecodeError):
        decode(bytes([0x92, Forward.TAG]) + b"\x91" * depth + b"\x00")
    head = msgpack.packb(FWD_HEAD[:5])  # the same five fields, then a deep ``tokens`` and a None ``hidden``
    body = bytes([0x97]) + head[1:] + b"\x91" * depth + b"\x00" + b"\xc0"
    assert reason_of(body) == ("fields" if depth < 1024 else "msgpack")  # msgpack's own stack limit is 1024


# --- property tests: nothing but a Message or a DecodeError ever comes out -----------------------------


def decodes_or_rejects(body: bytes) -> None:
    try:
        out = decode(body)
    except DecodeError as exc:
        assert exc.reason
    else:
        assert isinstance(out, Message) and type(out) is CATALOGUE[out.TAG]


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ENCODED = [encode(m) for m in EXAMPLES]


@PROPERTY
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    decodes_or_rejects(body)


@PROPERTY
@given(st.integers(0, 15), st.sampled_from([*CATALOGUE, 0, 99]), st.binary(max_size=300))
def test_arbitrary_bytes_behind_a_valid_header(n: int, tag: int, rest: bytes) -> None:
    decodes_or_rejects(bytes([0x90 | n, tag]) + rest)


@PROPERTY
@given(st.sampled_from(ENCODED), st.data())
def test_mutated_encodings(body: bytes, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["truncate", "flip", "append", "flip_many"]))
    if kind == "truncate":
        mutated = body[: data.draw(st.integers(0, len(body) - 1))]
    elif kind == "append":
        mutated = body + data.draw(st.binary(min_size=1, max_size=40))
    else:
        buf = bytearray(body)
        for _ in range(1 if kind == "flip" else data.draw(st.integers(2, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        mutated = bytes(buf)
    decodes_or_rejects(mutated)
