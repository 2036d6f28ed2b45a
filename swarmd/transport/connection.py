"""One authenticated, encrypted peer connection over asyncio streams.

Reads are bounded twice: the length prefix is checked against the current frame cap before the body
is read, and the body must arrive within ``io_timeout_s``. Any protocol violation raises a
:class:`ProtocolError`; the owner then closes this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import math

from ..config import NetConfig
from ..errors import AuthError, ProtocolError
from ..wire import codec
from ..wire.crypto import ClientHandshake, FrameSealer, Keyring, ServerHandshake, SessionKeys
from ..wire.framing import HEADER_SIZE, check_length, frame
from ..wire.messages import HANDSHAKE_TAGS, ClientAuth, ClientHello, Message, ServerHello

log = logging.getLogger(__name__)

HANDSHAKE_FRAME_CAP = 512
AFTER_HANDSHAKE = frozenset(codec.SCHEMAS) - HANDSHAKE_TAGS
# Bytes this process wrote to and read from peer connections (frames with headers, handshakes included).
WIRE_BYTES: dict[str, int] = {"out": 0, "in": 0}


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: NetConfig) -> None:
        self.reader = reader
        self.writer = writer
        self.cfg = cfg
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._cap = HANDSHAKE_FRAME_CAP
        self._send = FrameSealer(None)
        self._recv = FrameSealer(None)
        self.authenticated = False
        self.binding = b""  # unique to this connection once the handshake is done (SessionKeys.binding)
        self.node_id: str | None = None  # set from the peer's Hello

    # --- handshake ------------------------------------------------------------------------------

    async def client_handshake(self, keyring: Keyring | None) -> None:
        async with asyncio.timeout(self.cfg.handshake_timeout_s):
            hs = ClientHandshake(keyring)
            await self.send(hs.hello())
            reply = await self._read(frozenset({ServerHello.TAG}))
            assert isinstance(reply, ServerHello)
            auth, keys = hs.on_server_hello(reply)
            await self.send(auth)
        self._established(keys)

    async def server_handshake(self, keyring: Keyring | None) -> None:
        async with asyncio.timeout(self.cfg.handshake_timeout_s):
            hs = ServerHandshake(keyring)
            hello = await self._read(frozenset({ClientHello.TAG}))
            assert isinstance(hello, ClientHello)
            await self.send(hs.on_client_hello(hello))
            auth = await self._read(frozenset({ClientAuth.TAG}))
            assert isinstance(auth, ClientAuth)
            keys = hs.on_client_auth(auth)
        self._established(keys)

    def _established(self, keys: SessionKeys) -> None:
        self._send = FrameSealer(keys.send)
        self._recv = FrameSealer(keys.recv)
        self.binding = keys.binding
        self._cap = self.cfg.max_frame_bytes + self._recv.overhead
        self.authenticated = True

    # --- frames -----------------------------------------------------------------------------------

    def send_nowait(self, msg: Message) -> None:
        """Encode, seal and queue one frame. Synchronous, so frame order equals call order."""
        if self.writer.is_closing():
            raise ConnectionResetError(f"connection to {self.peer} is closed")
        data = frame(self._send.seal(codec.encode(msg)))
        self.writer.write(data)
        WIRE_BYTES["out"] += len(data)

    def send_many_nowait(self, msgs: list[Message]) -> None:
        """Several frames in one write (one syscall and one wake-up of the peer instead of several)."""
        if self.writer.is_closing():
            raise ConnectionResetError(f"connection to {self.peer} is closed")
        data = b"".join(frame(self._send.seal(codec.encode(m))) for m in msgs)
        self.writer.write(data)
        WIRE_BYTES["out"] += len(data)

    async def drain(self) -> None:
        if self.writer.transport.get_write_buffer_size() == 0:
            return  # nothing queued: the common case on a healthy link, no timer needed
        async with asyncio.timeout(self.cfg.io_timeout_s):
            await self.writer.drain()

    async def send(self, msg: Message) -> None:
        self.send_nowait(msg)
        await self.drain()

    async def _read(self, allowed: frozenset[int]) -> Message:
        header = await self.reader.readexactly(HEADER_SIZE)
        n = check_length(header, self._cap)
        async with asyncio.timeout(self.cfg.io_timeout_s):
            data = await self.reader.readexactly(n)
        WIRE_BYTES["in"] += HEADER_SIZE + n
        return codec.decode(self._recv.open(data), allowed)

    async def recv(self, max_silence_s: float | None = None) -> Message:
        """The next message; raises on EOF, bad frames and silence longer than ``max_silence_s``
        (default ``dead_after_s``; ``math.inf``: wait forever, the caller checks liveness another way)."""
        if not self.authenticated:
            raise AuthError("recv before the handshake", "handshake")
        limit = self.cfg.dead_after_s if max_silence_s is None else max_silence_s
        async with asyncio.timeout(None if math.isinf(limit) else limit):
            header = await self.reader.readexactly(HEADER_SIZE)
        n = check_length(header, self._cap)
        async with asyncio.timeout(self.cfg.io_timeout_s):
            data = await self.reader.readexactly(n)
        WIRE_BYTES["in"] += HEADER_SIZE + n
        return codec.decode(self._recv.open(data), AFTER_HANDSHAKE)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ProtocolError):
            pass


def describe_error(exc: BaseException) -> str:
    """A short reason for logs: why a connection was dropped."""
    if isinstance(exc, ProtocolError):
        return f"{exc.reason}: {exc.message}"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "peer closed the connection" if not exc.partial else "truncated frame"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
