"""wire/framing.py: 4-byte big-endian length frames; bad lengths fail before a body byte is buffered."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.errors import ProtocolError
from swarmd.wire.framing import HEADER_SIZE, FrameDecoder, check_length, frame

BODIES = [b"a", b"hello", bytes(range(256)), b"\x00" * 1000, b"z"]


def test_frame_layout() -> None:
    assert HEADER_SIZE == 4
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"x" * 0x0102)[:4] == b"\x00\x00\x01\x02"


def test_check_length() -> None:
    assert check_length(struct.pack(">I", 1), 10) == 1
    assert check_length(struct.pack(">I", 10), 10) == 10
    with pytest.raises(ProtocolError) as info:
        check_length(struct.pack(">I", 11), 10)
    assert info.value.reason == "oversized"
    with pytest.raises(ProtocolError) as info:
        check_length(struct.pack(">I", 0), 10)
    assert info.value.reason == "empty_frame"


def test_one_frame() -> None:
    dec = FrameDecoder(cap=1024)
    assert dec.feed(frame(b"hello")) == [b"hello"]
    assert dec.pending == 0


def test_several_frames_in_one_feed() -> None:
    dec = FrameDecoder(cap=4096)
    assert dec.feed(b"".join(frame(b) for b in BODIES)) == BODIES
    assert dec.pending == 0


def test_byte_by_byte() -> None:
    dec = FrameDecoder(cap=4096)
    out: list[bytes] = []
    for byte in b"".join(frame(b) for b in BODIES):
        out += dec.feed(bytes([byte]))
    assert out == BODIES
    assert dec.pending == 0


def test_partial_frame_waits_and_keeps_the_rest() -> None:
    dec = FrameDecoder(cap=64)
    wire = frame(b"first") + frame(b"second")
    assert dec.feed(wire[:3]) == []
    assert dec.feed(wire[3:8]) == []
    assert dec.feed(wire[8:12]) == [b"first"]
    assert dec.pending == 3  # three header bytes of the second frame
    assert dec.feed(wire[12:]) == [b"second"]
    assert dec.feed(b"") == []


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=10), st.data())
def test_any_split_yields_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    dec = FrameDecoder(cap=200)
    out: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += dec.feed(wire[a:b])
    assert out == bodies
    assert dec.pending == 0


def test_cap_is_inclusive() -> None:
    dec = FrameDecoder(cap=8)
    assert dec.feed(frame(b"12345678")) == [b"12345678"]
    with pytest.raises(ProtocolError) as info:
        dec.feed(frame(b"123456789"))
    assert info.value.reason == "oversized"


@pytest.mark.parametrize("n", [2**32 - 1, 2**31, 1025])
def test_huge_length_fails_at_the_header(n: int) -> None:
    dec = FrameDecoder(cap=1024)
    assert dec.feed(struct.pack(">I", n)[:2]) == []
    with pytest.raises(ProtocolError) as info:
        dec.feed(struct.pack(">I", n)[2:])
    assert info.value.reason == "oversized"
    assert dec.pending <= HEADER_SIZE  # nothing of the body was waited for or kept


def test_huge_length_after_good_frames() -> None:
    dec = FrameDecoder(cap=1024)
    assert dec.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(ProtocolError) as info:
        dec.feed(struct.pack(">I", 2**32 - 1))
    assert info.value.reason == "oversized"
    assert dec.pending <= HEADER_SIZE


def test_empty_frame() -> None:
    dec = FrameDecoder(cap=1024)
    with pytest.raises(ProtocolError) as info:
        dec.feed(frame(b""))
    assert info.value.reason == "empty_frame"


def test_empty_frame_after_a_good_one_in_the_same_feed() -> None:
    dec = FrameDecoder(cap=1024)
    with pytest.raises(ProtocolError) as info:
        dec.feed(frame(b"ok") + frame(b"") + frame(b"never"))
    assert info.value.reason == "empty_frame"


def test_cap_can_be_raised_after_the_handshake() -> None:
    dec = FrameDecoder(cap=16)
    assert dec.feed(frame(b"x" * 16)) == [b"x" * 16]
    dec.cap = 1024
    assert dec.feed(frame(b"y" * 1000)) == [b"y" * 1000]
