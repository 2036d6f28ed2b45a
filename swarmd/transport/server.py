"""The peer-to-peer listener: accepts, authenticates, then hands each connection to the node's handler.

Owns one task per connection; ``stop`` closes the listener, then every connection, then awaits them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..config import NetConfig, parse_hostport
from ..wire.crypto import Keyring
from .connection import Connection, describe_error

log = logging.getLogger(__name__)

Handler = Callable[[Connection], Awaitable[None]]
MAX_REFUSALS = 64  # remote hosts whose last refusal is remembered for swarmctl doctor


class PeerServer:
    def __init__(self, cfg: NetConfig, keyring: Keyring | None, handler: Handler) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], Connection] = {}
        self.address: tuple[str, int] | None = None
        self.rejected: dict[str, int] = {}  # reason -> count of connections refused or cut for bad input
        self.disconnects: dict[str, int] = {}  # how authenticated peers went away (EOF, reset, silence)
        # remote host -> (time.time(), reason label, message) of its last refused connection (doctor)
        self.refusals: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._stopping = False

    async def start(self) -> None:
        host, port = parse_hostport(self.cfg.listen)
        self._server = await asyncio.start_server(self._accept, host, port, limit=64 * 1024)
        sock = self._server.sockets[0]
        self.address = sock.getsockname()[:2]
        log.info("peer listener on %s:%d", *self.address)

    def _count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.cfg)
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.cfg.max_connections:
            self._count("too_many_connections")
            log.warning("refusing %s: %d connections already open", conn.peer, len(self._conns))
            await conn.aclose()
            return
        self._conns[task] = conn
        try:
            await conn.server_handshake(self.keyring)
            await self.handler(conn)
        except asyncio.CancelledError:
            if self._stopping:
                # stop() cancelled us: end normally, or Python 3.11's start_server callback logs the
                # cancellation as an error (it calls task.exception() on a cancelled task).
                return
            raise
        except Exception as exc:  # a peer's bad input: drop this connection only
            reason = describe_error(exc)
            label = getattr(exc, "reason", None)
            if label is None and isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                label = "truncated"
            elif label is None and not conn.authenticated:
                label = "handshake_" + ("eof" if isinstance(exc, asyncio.IncompleteReadError) else type(exc).__name__)
            if label is None:  # an authenticated peer went away: not a rejection
                self.disconnects[type(exc).__name__] = self.disconnects.get(type(exc).__name__, 0) + 1
            else:
                self._count(label)
            if hasattr(exc, "reason") and conn.node_id is None:  # refused before its Hello was accepted
                self._remember(conn.peer.rpartition(":")[0], label or "", str(getattr(exc, "message", reason)))
            level = logging.INFO if conn.authenticated else logging.WARNING
            log.log(level, "closing connection from %s (%s): %s", conn.peer, conn.node_id or "unknown", reason)
        finally:
            self._conns.pop(task, None)
            await conn.aclose()

    def _remember(self, host: str, label: str, message: str) -> None:
        self.refusals[host] = (time.time(), label, message[:200])
        self.refusals.move_to_end(host)
        while len(self.refusals) > MAX_REFUSALS:
            self.refusals.popitem(last=False)

    def drop_node(self, node_id: str) -> int:
        """Close every inbound connection from ``node_id`` (e.g. it was just banned); returns how many."""
        hit = [conn for conn in self._conns.values() if conn.node_id == node_id]
        for conn in hit:
            conn.close()
        return len(hit)

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._conns)
        for task, conn in list(self._conns.items()):
            conn.close()
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
