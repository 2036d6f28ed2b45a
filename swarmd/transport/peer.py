"""Outgoing links: one persistent, authenticated connection per peer address, with reconnect and backoff.

Messages on a link flow one way (this node -> the peer); the peer answers only Hello (once) and Pong.
The link's task owns the connection: it connects, handshakes, exchanges Hello, pings, and on any error
closes and retries after a jittered, doubling backoff.

Two kinds of traffic: ring messages (``send``) need the link up and keep it pinged for
``keepalive_window_s``, so a dead hop is noticed within ``dead_after_s``; gossip (``post``) is best
effort, waits in a small queue while the link connects, and does not keep the link pinged (SWIM judges
liveness itself, so an idle full mesh costs no keepalive traffic).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from collections.abc import Callable

from ..config import NetConfig, parse_hostport
from ..errors import PeerUnavailable, ProtocolError
from ..wire.crypto import Keyring
from ..wire.messages import Hello, Message, Ping, Pong
from .connection import Connection, describe_error

log = logging.getLogger(__name__)

PENDING_LIMIT = 32  # gossip messages queued while a link connects; the oldest is dropped beyond
PENDING_MAX_AGE_S = 2.0  # queued gossip older than this is stale when the link comes up: dropped
# (addr, hello, connection binding) -> accept; None: it is us, stop the link
HelloCallback = Callable[[str, Hello, bytes], bool | None]


class _LinkToSelf(Exception):
    pass


class PeerLink:
    def __init__(self, addr: str, cfg: NetConfig, keyring: Keyring | None, hello: Callable[[bytes], Hello],
                 on_hello: HelloCallback, on_down: Callable[[str], None]) -> None:
        self.addr = addr
        self.cfg = cfg
        self.keyring = keyring
        self._hello = hello
        self._on_hello = on_hello
        self._on_down = on_down
        self.conn: Connection | None = None
        self.state = "connecting"  # connecting | up | backoff
        self.last_error = ""
        self.node_id: str | None = None
        self.rtt_s: float | None = None
        self.on_rtt: Callable[[float], None] | None = None  # each measured round trip (metrics)
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pings: dict[int, float] = {}
        self._nonce = 0
        self.last_pong = -math.inf  # when the peer last answered a ping on this link
        self._last_use = -math.inf  # when ring traffic last went out (keeps the link pinged)
        self._pending: collections.deque[tuple[float, Message]] = collections.deque(maxlen=PENDING_LIMIT)
        self._failed = False  # the last attempt failed and no connection came up since
        self._kick = asyncio.Event()  # cuts a reconnect backoff short

    def kick(self) -> None:
        """Reconnect now if the link is waiting out a backoff (the peer is known to be back)."""
        self.start()
        self._kick.set()

    def start(self) -> None:
        if self._task is None and self.state != "self":
            self._task = asyncio.create_task(self._run(), name=f"peer-link {self.addr}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.conn is not None:
            await self.conn.aclose()
            self.conn = None

    @property
    def up(self) -> bool:
        return self.conn is not None and self.state == "up"

    @property
    def failing(self) -> bool:
        """The connection broke or could not be made, and no new one has come up since: routing skips the
        peer at once (the data plane knows before gossip declares the member dead)."""
        return self._failed and self.state != "up"

    async def wait_up(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
            return True
        except TimeoutError:
            return False

    def post(self, msg: Message) -> bool:
        """Best-effort gossip: write now if up, else queue it for when the link comes up (bounded)."""
        self.start()
        if self.up:
            try:
                self._write(msg)
                return True
            except PeerUnavailable:
                return False
        self._pending.append((time.monotonic(), msg))
        return False

    def send_nowait(self, *msgs: Message) -> None:
        """Queue ring messages on the live connection (one write); raises PeerUnavailable when there is none."""
        self._last_use = time.monotonic()
        self._write(*msgs)

    def _write(self, *msgs: Message) -> None:
        conn = self.conn
        if conn is None or self.state != "up":
            raise PeerUnavailable(f"no connection to {self.addr} ({self.last_error or self.state})")
        try:
            if len(msgs) == 1:
                conn.send_nowait(msgs[0])
            else:
                conn.send_many_nowait(list(msgs))
        except (OSError, RuntimeError) as exc:
            raise PeerUnavailable(f"send to {self.addr} failed: {exc}") from exc

    async def send(self, *msgs: Message) -> None:
        self.send_nowait(*msgs)
        conn = self.conn
        if conn is not None:
            try:
                await conn.drain()
            except (OSError, TimeoutError) as exc:
                conn.close()
                raise PeerUnavailable(f"send to {self.addr} failed: {describe_error(exc)}") from exc

    async def _run(self) -> None:
        delay = self.cfg.reconnect_min_s
        while True:
            try:
                await self._session()
                delay = self.cfg.reconnect_min_s
            except asyncio.CancelledError:
                raise
            except _LinkToSelf:
                log.debug("%s is this node's own address: link closed", self.addr)
                await self._teardown()
                self.state = "self"
                return
            except Exception as exc:  # any failure of this link: log, back off, retry
                self._failed = True
                self.last_error = describe_error(exc)
                log.log(logging.WARNING if isinstance(exc, ProtocolError) else logging.DEBUG,
                        "link to %s down: %s", self.addr, self.last_error)
            await self._teardown()
            self._kick.clear()
            try:
                async with asyncio.timeout(delay * (0.5 + random.random())):
                    await self._kick.wait()
                delay = self.cfg.reconnect_min_s  # kicked: the peer is back, start the backoff afresh
            except TimeoutError:
                delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _teardown(self) -> None:
        was_up = self.state == "up"
        self.state = "backoff"
        self._up.clear()
        if self.conn is not None:
            await self.conn.aclose()
            self.conn = None
        if was_up:
            self._on_down(self.addr)

    async def _session(self) -> None:
        self.state = "connecting"
        host, port = parse_hostport(self.addr)
        async with asyncio.timeout(self.cfg.connect_timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024)
        conn = Connection(reader, writer, self.cfg)
        self.conn = conn
        await conn.client_handshake(self.keyring)
        await conn.send(self._hello(conn.binding))
        reply = await conn.recv()
        if not isinstance(reply, Hello):
            raise ProtocolError(f"expected Hello, got {type(reply).__name__}", "unexpected")
        verdict = self._on_hello(self.addr, reply, conn.binding)
        if verdict is None:
            raise _LinkToSelf()
        if not verdict:
            raise ProtocolError(f"peer {reply.node_id} at {self.addr} is not compatible", "incompatible")
        conn.node_id = self.node_id = reply.node_id
        self.state = "up"
        self.last_error = ""
        self._failed = False
        self._up.set()
        fresh = time.monotonic() - PENDING_MAX_AGE_S
        while self._pending:
            at, msg = self._pending.popleft()
            if at >= fresh:
                self._write(msg)
        pinger = asyncio.create_task(self._ping(conn), name=f"ping {self.addr}")
        pinger.add_done_callback(lambda t: conn.close() if not t.cancelled() and t.exception() else None)
        try:
            while True:  # the peer only ever answers Pong on this connection
                msg = await conn.recv(math.inf)  # liveness is the pinger's job (unanswered pings)
                if isinstance(msg, Pong):
                    sent = self._pings.pop(msg.nonce, None)
                    if sent is not None:
                        self.last_pong = time.monotonic()
                        self.rtt_s = self.last_pong - sent
                        if self.on_rtt is not None:
                            self.on_rtt(self.rtt_s)
                else:
                    raise ProtocolError(f"unexpected {type(msg).__name__} on an outgoing link", "unexpected")
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping(self, conn: Connection) -> None:
        """While ring traffic used the link recently, ping it; a ping unanswered for ``dead_after_s``
        closes it. An idle link sends nothing."""
        self._pings.clear()
        while True:
            now = time.monotonic()
            if self._pings and now - min(self._pings.values()) > self.cfg.dead_after_s:
                raise TimeoutError(f"no pong from {self.addr} for {self.cfg.dead_after_s}s")
            if now - self._last_use <= self.cfg.keepalive_window_s or self.rtt_s is None:
                self.ping_now()
                await conn.drain()
            else:
                self._pings.clear()
            await asyncio.sleep(self.cfg.ping_interval_s)

    def ping_now(self) -> None:
        """Ping at once (when up): the pong, or its absence, tells whether the peer is reachable now."""
        conn = self.conn
        if conn is None or self.state != "up":
            return
        self._nonce += 1
        self._pings[self._nonce] = time.monotonic()
        if len(self._pings) > 16:
            self._pings.pop(min(self._pings))
        try:
            conn.send_nowait(Ping(self._nonce))
        except (OSError, RuntimeError):
            pass  # the link's own task notices the broken connection
