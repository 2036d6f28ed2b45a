"""Frames: a 4-byte big-endian length, then that many bytes. Sans-I/O.

The length is checked against the connection's current cap before a single body byte is read or
buffered: during the handshake the cap is tiny; afterwards it is ``max_frame_bytes`` from config.
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def check_length(header: bytes, cap: int) -> int:
    (n,) = HEADER.unpack(header)
    if n == 0:
        raise ProtocolError("empty frame", "empty_frame")
    if n > cap:
        raise ProtocolError(f"frame of {n} bytes exceeds the cap of {cap}", "oversized")
    return n


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole frame bodies; raises before buffering an oversized body."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_SIZE:
                    return out
                self._need = check_length(bytes(self._buf[:HEADER_SIZE]), self.cap)
                del self._buf[:HEADER_SIZE]
            if len(self._buf) < self._need:
                return out
            out.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    @property
    def pending(self) -> int:
        return len(self._buf)
