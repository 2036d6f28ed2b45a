"""wire/codec.py encode_meta/decode_meta: NodeMeta round-trips under its cap; hostile bytes raise DecodeError only."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.errors import DecodeError
from swarmd.wire.codec import decode_meta, encode_meta
from swarmd.wire.messages import NodeMeta, SpanState

BASE = NodeMeta("swarmd/0.1.0", 1, "HuggingFaceTB/SmolLM2-135M", 30, "cuda:0", 8 << 30, 2, 0.0012,
                (SpanState(0, 15, "serving"),), 3, 1, "serving", False)


def as_list(meta: NodeMeta = BASE) -> list[Any]:
    """The wire layout of ``meta`` as a plain list, for crafting bad bodies with msgpack.packb."""
    out: list[Any] = [NodeMeta.VERSION]
    for f in dataclasses.fields(meta):
        v = getattr(meta, f.name)
        out.append([[s.start, s.end, s.state] for s in v] if f.name == "spans" else v)
    return out


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def field_index(name: str) -> int:
    return 1 + [f.name for f in dataclasses.fields(NodeMeta)].index(name)


def with_field(name: str, value: Any) -> bytes:
    body = as_list()
    body[field_index(name)] = value
    return pack(body)


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("meta", [
    BASE,
    dataclasses.replace(BASE, spans=(), sessions=0, queue=0, health="starting", seconds_per_layer=0.0),
    dataclasses.replace(BASE, spans=(SpanState(0, 10, "serving"), SpanState(10, 20, "loading"),
                                     SpanState(20, 30, "draining")), health="degraded", pinned=True),
    NodeMeta("", 0, "", 0, "", 0, 0, 0.0, (), 0, 0, "", False),
    dataclasses.replace(BASE, memory_bytes=(1 << 63) - 1, queue=-1, model="modèle/ünïcode"),
])
def test_round_trip(meta: NodeMeta) -> None:
    body = encode_meta(meta)
    assert len(body) <= NodeMeta.CAP
    assert decode_meta(body) == meta


def test_decoded_types_are_exact() -> None:
    got = decode_meta(encode_meta(dataclasses.replace(BASE, seconds_per_layer=0.5)))
    assert isinstance(got.spans, tuple) and all(isinstance(s, SpanState) for s in got.spans)
    assert type(got.seconds_per_layer) is float and type(got.pinned) is bool


def test_integer_speed_decodes_as_float() -> None:
    got = decode_meta(with_field("seconds_per_layer", 2))
    assert got.seconds_per_layer == 2.0 and type(got.seconds_per_layer) is float


def test_encoding_is_deterministic() -> None:
    assert encode_meta(BASE) == encode_meta(dataclasses.replace(BASE))


@settings(max_examples=150, deadline=None)
@given(
    software=st.text(max_size=40), model=st.text(max_size=60), device=st.text(max_size=12),
    ints=st.lists(st.integers(-1, (1 << 63) - 1), min_size=6, max_size=6),
    spl=st.floats(allow_nan=False, allow_infinity=False),
    spans=st.lists(st.tuples(st.integers(-1, 10_000), st.integers(-1, 10_000),
                             st.sampled_from(["loading", "serving", "draining"])), max_size=4),
    health=st.sampled_from(["starting", "serving", "draining", "degraded"]), pinned=st.booleans(),
)
def test_round_trip_property(software: str, model: str, device: str, ints: list[int], spl: float,
                             spans: list[tuple[int, int, str]], health: str, pinned: bool) -> None:
    protocol, num_layers, memory, dtype_bytes, sessions, queue = ints
    meta = NodeMeta(software, protocol, model, num_layers, device, memory, dtype_bytes, spl,
                    tuple(SpanState(*s) for s in spans), sessions, queue, health, pinned)
    try:
        body = encode_meta(meta)
    except ValueError:
        assert len(pack(as_list(meta))) > NodeMeta.CAP
        return
    assert decode_meta(body) == meta


# --- the cap -----------------------------------------------------------------------------------------------


def test_encode_refuses_meta_above_the_cap() -> None:
    with pytest.raises(ValueError, match=f"exceeds {NodeMeta.CAP}"):
        encode_meta(dataclasses.replace(BASE, software="x" * (NodeMeta.CAP + 100)))


def test_encode_accepts_exactly_the_cap() -> None:
    room = NodeMeta.CAP - len(encode_meta(dataclasses.replace(BASE, software="")))
    # "" has a 1-byte header and a string this long a 3-byte str16 one: it takes room - 2 characters.
    exact = dataclasses.replace(BASE, software="s" * (room - 2))
    body = encode_meta(exact)
    assert len(body) == NodeMeta.CAP
    assert decode_meta(body) == exact
    with pytest.raises(ValueError):
        encode_meta(dataclasses.replace(BASE, software="s" * (room - 1)))


def test_decode_refuses_bytes_over_the_cap_before_parsing() -> None:
    body = with_field("software", "x" * (NodeMeta.CAP + 100))
    assert len(body) > NodeMeta.CAP
    with pytest.raises(DecodeError) as exc:
        decode_meta(body)
    assert exc.value.reason == "oversized"
    with pytest.raises(DecodeError):
        decode_meta(b"\x00" * (NodeMeta.CAP + 1))  # not even msgpack: the size check comes first


# --- hostile bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 3, -1, 255, "2", None, [2], b"\x02"])
def test_wrong_version_is_refused(version: Any) -> None:
    body = as_list()
    body[0] = version
    with pytest.raises(DecodeError) as exc:
        decode_meta(pack(body))
    assert exc.value.reason == "fields"


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_of_another_type_that_equals_one_is_refused(version: Any) -> None:
    body = as_list()
    body[0] = version
    with pytest.raises(DecodeError):
        decode_meta(pack(body))


def test_wrong_field_count_is_refused() -> None:
    for body in (as_list()[:-1], [*as_list(), False], [NodeMeta.VERSION], []):
        with pytest.raises(DecodeError) as exc:
            decode_meta(pack(body))
        assert exc.value.reason == "fields"


@pytest.mark.parametrize(("name", "value"), [
    ("software", 5),
    ("software", b"swarmd"),  # bin, not str
    ("protocol", "1"),
    ("protocol", True),
    ("num_layers", 1.5),
    ("num_layers", None),
    ("memory_bytes", False),
    ("memory_bytes", -2),  # below the codec's integer range
    ("dtype_bytes", [2]),
    ("seconds_per_layer", "fast"),
    ("seconds_per_layer", True),
    ("seconds_per_layer", math.nan),
    ("seconds_per_layer", math.inf),
    ("spans", "0:8"),
    ("spans", [[0, 8]]),  # SpanState needs three fields
    ("spans", [[0, "8", "serving"]]),
    ("spans", [[0, 8, "serving", 1]]),
    ("spans", [(0, 8, 3)]),
    ("sessions", 0.0),
    ("health", None),
    ("pinned", 0),
    ("pinned", "false"),
])
def test_wrong_field_type_is_refused(name: str, value: Any) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_meta(with_field(name, value))
    assert exc.value.reason == "fields"


@pytest.mark.parametrize("value", [{"software": "swarmd"}, {}, {1: 2}])
def test_map_is_refused(value: dict[Any, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_meta(pack(value))


def test_map_inside_a_field_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_meta(with_field("spans", [{"start": 0, "end": 8, "state": "serving"}]))


@pytest.mark.parametrize("tail", [b"\x00", b"\xc0", encode_meta(BASE)])
def test_trailing_garbage_is_refused(tail: bytes) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_meta(encode_meta(BASE) + tail)
    assert exc.value.reason == "msgpack"


@pytest.mark.parametrize("body", [b"", b"\xc1", encode_meta(BASE)[:-1], b"\x9e", b"\xdc\xff\xff",
                                  pack(msgpack.ExtType(1, b"x"))])
def test_truncated_or_invalid_msgpack_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_meta(body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_decode_error(body: bytes) -> None:
    try:
        meta = decode_meta(body)
    except DecodeError:
        return
    assert isinstance(meta, NodeMeta)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(encode_meta(BASE)) - 1), st.integers(0, 255))
def test_one_corrupted_byte_decodes_or_raises_decode_error(pos: int, byte: int) -> None:
    body = bytearray(encode_meta(BASE))
    body[pos] = byte
    try:
        meta = decode_meta(bytes(body))
    except DecodeError:
        return
    assert isinstance(meta, NodeMeta)


def test_non_finite_speed_is_never_published() -> None:
    with pytest.raises(ValueError, match="not publishable"):
        encode_meta(dataclasses.replace(BASE, seconds_per_layer=float("nan")))


def test_gossiped_quarantine_and_ban_lists_are_bounded_and_well_formed() -> None:
    ok = dataclasses.replace(BASE, quarantined=("a",) * NodeMeta.MAX_QUARANTINED, banned=("0123456789abcdef",) * 2)
    assert decode_meta(encode_meta(ok)) == ok
    for bad in (dataclasses.replace(BASE, quarantined=("a",) * (NodeMeta.MAX_QUARANTINED + 1)),
                dataclasses.replace(BASE, banned=("0123456789abcdef",) * (NodeMeta.MAX_BANNED + 1)),
                dataclasses.replace(BASE, banned=("not-a-fingerprint",))):
        with pytest.raises(ValueError):
            encode_meta(bad)
