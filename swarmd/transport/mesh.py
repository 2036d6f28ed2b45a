"""The node's connections to the rest of the swarm: the listener, one outgoing link per peer address,
and the peer table fed by their Hello messages. ``send`` reaches a hop (locally when it is this node);
every inbound message goes to one ``dispatch`` callback with the sender's authenticated node id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..config import NetConfig, parse_hostport
from ..errors import ConfigError, PeerUnavailable, ProtocolError
from ..membership.table import PeerTable
from ..wire.crypto import Keyring
from ..wire.messages import Hello, Hop, Message, Ping, Pong
from .connection import Connection
from .peer import PeerLink
from .server import PeerServer

log = logging.getLogger(__name__)

Dispatch = Callable[[Message, str], None]
MAX_NODE_ID = 128
MAX_HEARD = 1024  # peers whose clock and mDNS flag are remembered (oldest forgotten first)


class Mesh:
    def __init__(self, cfg: NetConfig, keyring: Keyring | None, node_id: str, make_hello: Callable[[str], Hello],
                 dispatch: Dispatch, on_peer_lost: Callable[[str], None],
                 resolve: Callable[[str], str | None] = lambda node_id: None) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.node_id = node_id
        self._make_hello = make_hello
        self.dispatch = dispatch
        self.on_peer_lost = on_peer_lost
        self.resolve = resolve  # node id -> address membership knows for it (None: unknown)
        self.table = PeerTable(node_id)
        self.links: dict[str, PeerLink] = {}
        self.server = PeerServer(cfg, keyring, self._serve)
        self.advertised = ""
        self.incompatible: dict[str, str] = {}  # addr -> why
        # node id -> (its wall clock minus ours when its Hello arrived, in s; whether it announces by mDNS)
        self.heard: dict[str, tuple[float | None, bool]] = {}
        # Identity on links, set by the node: (peer's Hello, connection binding) -> why it is refused (no
        # valid proof, banned, another key than its node id's), or None; and how our Hello is signed.
        self.refuse: Callable[[Hello, bytes], str | None] = lambda hello, binding: None
        self.sign_hello: Callable[[Hello, bytes], Hello] = lambda hello, binding: hello
        self.own_identity = b""  # this node's identity key (set by the node): a Hello from it is our own
        self.on_rtt: Callable[[str, float], None] | None = None  # (peer's node id, link round trip): metrics

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.server.start()
        assert self.server.address is not None
        host, port = self.server.address
        self.advertised = f"{host}:{port}"

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links.values()), return_exceptions=True)
        await self.server.stop()

    def hello(self, binding: bytes = b"") -> Hello:
        """This node's Hello for one connection (signed for its ``binding``)."""
        return self.sign_hello(self._make_hello(self.advertised), binding)

    # --- outgoing -------------------------------------------------------------------------------

    def link(self, addr: str) -> PeerLink:
        link = self.links.get(addr)
        if link is None:
            link = PeerLink(addr, self.cfg, self.keyring, self.hello, self._on_link_hello, self._on_link_down)
            link.on_rtt = lambda rtt: self.on_rtt(link.node_id or link.addr, rtt) if self.on_rtt else None
            self.links[addr] = link
            link.start()
        return link

    def post(self, addr: str, msg: Message) -> None:
        """Best-effort gossip to an address (queued briefly while its link connects); never raises."""
        if addr in (self.advertised, self.cfg.listen):
            return
        self.link(addr).post(msg)

    def forget(self, addr: str) -> PeerLink | None:
        """Remove the link to an address at once (its member is dead or left; seeds are kept); the caller
        stops the returned link. A later ``link``/``connect`` starts afresh."""
        if addr in self.cfg.peers:
            return None
        return self.links.pop(addr, None)

    def connect(self, addr: str) -> None:
        """A member at ``addr`` is (again) alive: have a link up soon, skipping any reconnect backoff."""
        if addr not in (self.advertised, self.cfg.listen):
            self.link(addr).kick()

    def answered_since(self, node_id: str, since: float) -> bool:
        """Whether the node answered a ping on our link to it at or after ``since`` (monotonic). A pong
        proves it received everything we sent before the ping (one TCP stream) and that its event loop
        runs: a node that is merely busy computing still answers."""
        if node_id == self.node_id:
            return True
        link = self.links.get(self.resolve(node_id) or "")
        return link is not None and link.node_id == node_id and link.last_pong >= since

    def nudge(self, node_id: str) -> None:
        """Ping the node's link now, so that ``answered_since`` soon knows whether it is reachable."""
        link = self.links.get(self.resolve(node_id) or "")
        if link is not None:
            link.ping_now()

    async def send(self, hop: Hop, *msgs: Message) -> None:
        """Deliver messages to a hop, in order, in one write when it is remote."""
        if hop.node_id == self.node_id:
            for msg in msgs:
                self.dispatch(msg, self.node_id)
            return
        # The address membership knows for that node id (it may have moved) beats the one in the hop.
        link = self.link(self.resolve(hop.node_id) or hop.addr)
        if link.failing:  # broken and not back yet: fail fast, the entry replays elsewhere
            raise PeerUnavailable(f"no connection to {hop.node_id} at {link.addr} ({link.last_error})")
        if not link.up and not await link.wait_up(self.cfg.connect_timeout_s):
            raise PeerUnavailable(f"no connection to {hop.node_id} at {link.addr} ({link.last_error or link.state})")
        if link.node_id != hop.node_id:
            raise PeerUnavailable(f"{hop.addr} is now node {link.node_id}, not {hop.node_id}")
        await link.send(*msgs)

    def judge(self, hello: Hello, binding: bytes) -> str | None:
        """Why a peer's Hello on a connection with this ``binding`` is refused (None: accepted)."""
        return self._compatible(hello, binding)

    def is_self(self, hello: Hello, binding: bytes) -> bool:
        """The Hello is this node's own (a seed or probe that reached this node under another address)."""
        return (hello.node_id == self.node_id and bool(self.own_identity) and hello.identity == self.own_identity
                and self.refuse(hello, binding) is None)

    def _compatible(self, hello: Hello, binding: bytes) -> str | None:
        mine = self._make_hello(self.advertised)
        if hello.node_id == self.node_id:
            return "peer uses this node's id"
        if (why := self.refuse(hello, binding)) is not None:
            return why
        if not hello.node_id or len(hello.node_id) > MAX_NODE_ID:
            return "invalid node id"
        if (hello.model, hello.num_layers, hello.hidden_size) != (mine.model, mine.num_layers, mine.hidden_size):
            return f"serves {hello.model} ({hello.num_layers} layers), this node {mine.model}"
        if hello.span_start >= 0 and not 0 <= hello.span_start < hello.span_end <= hello.num_layers:
            return "invalid layer span"
        try:
            if parse_hostport(hello.listen)[1] == 0:
                return "listen address without a port"
        except ConfigError:
            return f"invalid listen address {hello.listen!r}"
        return None

    def _on_link_hello(self, addr: str, hello: Hello, binding: bytes) -> bool | None:
        if hello.node_id == self.node_id:
            return None  # a seed address that turned out to be this node
        why = self._compatible(hello, binding)
        if why is not None:
            self.incompatible[addr] = why
            log.warning("peer at %s rejected: %s", addr, why)
            return False
        self.incompatible.pop(addr, None)
        self.table.saw(addr, hello, time.monotonic())
        self._heard(hello)
        return True

    def _heard(self, hello: Hello) -> None:
        self.heard.pop(hello.node_id, None)  # re-inserted last: the least recently heard is forgotten first
        if len(self.heard) >= MAX_HEARD:
            self.heard.pop(next(iter(self.heard)))
        skew = hello.wall_ms / 1000 - time.time() if hello.wall_ms > 0 else None
        self.heard[hello.node_id] = (skew, hello.mdns)

    def _on_link_down(self, addr: str) -> None:
        for info in list(self.table.peers.values()):
            if info.addr == addr and info.state == "alive":
                self.table.down(info.node_id, time.monotonic())
                log.info("peer %s at %s is down", info.node_id, addr)
                self.on_peer_lost(info.node_id)

    # --- incoming -------------------------------------------------------------------------------

    async def _serve(self, conn: Connection) -> None:
        first = await conn.recv()
        if not isinstance(first, Hello):
            raise ProtocolError(f"expected Hello first, got {type(first).__name__}", "unexpected")
        if self.is_self(first, conn.binding):  # our own link or probe, under another address: say so, close
            await conn.send(self.hello(conn.binding))
            return
        why = self._compatible(first, conn.binding)
        if why is not None:
            raise ProtocolError(why, "incompatible")
        host, _, port = first.listen.rpartition(":")
        if host in ("0.0.0.0", "::", ""):  # the peer listens on every address: use the one it came from
            host = conn.peer.rpartition(":")[0]
        addr = f"{host}:{port}"
        conn.node_id = first.node_id
        self._heard(first)
        await conn.send(self.hello(conn.binding))
        if first.node_id not in self.table.peers:
            self.table.saw(addr, first, time.monotonic())  # refreshed by our own link's Hello exchange
        self.link(addr)  # a way back to this peer
        while True:
            msg = await conn.recv(self.cfg.link_idle_s)  # idle links are silent; SWIM judges liveness
            if isinstance(msg, Ping):
                conn.send_nowait(Pong(msg.nonce))
                await conn.drain()  # a peer that stops reading stops being read (and times out), not buffered for
            elif isinstance(msg, (Hello, Pong)):
                raise ProtocolError(f"unexpected {type(msg).__name__}", "unexpected")
            else:
                self.dispatch(msg, first.node_id)
