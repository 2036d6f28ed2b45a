"""The peer table: what this node knows of every other node, learned from their Hello messages.

Static for now (peers are configured); SWIM gossip replaces the liveness source later without
changing what the rest of the node reads from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.messages import Hello


@dataclass
class PeerInfo:
    node_id: str
    addr: str  # where this node reaches the peer's listener
    hello: Hello
    state: str = "alive"  # alive | dead
    since: float = 0.0

    @property
    def span(self) -> tuple[int, int] | None:
        h = self.hello
        return (h.span_start, h.span_end) if h.span_start >= 0 else None


class PeerTable:
    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.peers: dict[str, PeerInfo] = {}

    def saw(self, addr: str, hello: Hello, now: float) -> PeerInfo:
        info = self.peers.get(hello.node_id)
        if info is None or info.addr != addr or info.hello != hello or info.state != "alive":
            info = PeerInfo(hello.node_id, addr, hello, "alive", now)
            self.peers[hello.node_id] = info
        return info

    def down(self, node_id: str, now: float) -> None:
        info = self.peers.get(node_id)
        if info is not None and info.state == "alive":
            info.state = "dead"
            info.since = now

    def alive(self) -> list[PeerInfo]:
        return [p for p in self.peers.values() if p.state == "alive"]
