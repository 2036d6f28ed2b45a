"""This node's view of the swarm, built from SWIM's member changes: state, address and decoded metadata of
every other member. Placement, routing and the status document all read from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import DecodeError
from ..wire.codec import decode_meta
from ..wire.messages import NodeMeta
from .swim_messages import ALIVE, SUSPECT
from .swim_types import MemberChanged

log = logging.getLogger(__name__)

LIVE = (ALIVE, SUSPECT)


@dataclass(frozen=True)
class PeerView:
    node_id: str
    addr: str
    state: str  # alive | suspect | dead | left
    incarnation: int
    since: float  # when ``state`` began, on this node's monotonic clock
    meta: NodeMeta | None  # None until the member published valid metadata
    meta_problem: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def serving_spans(self) -> list[tuple[int, int]]:
        """Spans that take new sessions (not loading, not draining) on a member that is not draining."""
        m = self.meta
        if m is None or m.health not in ("serving", "degraded"):
            return []
        return [(s.start, s.end) for s in m.spans if s.state == "serving"]


class SwarmView:
    """Other members, keyed by node id. ``apply`` returns whether something placement or routing reads changed."""

    def __init__(self, self_id: str, model: str = "", num_layers: int = 0) -> None:
        self.self_id = self_id
        self.model = model
        self.num_layers = num_layers
        self.peers: dict[str, PeerView] = {}
        self.version = 0  # bumped on every relevant change

    def apply(self, change: MemberChanged) -> bool:
        m = change.member
        if m.node_id == self.self_id:
            return False
        if change.removed:
            gone = self.peers.pop(m.node_id, None) is not None
            self.version += gone
            return gone
        old = self.peers.get(m.node_id)
        meta, problem = self._decode(m.node_id, m.meta)
        new = PeerView(m.node_id, m.addr, m.state, m.incarnation, m.since, meta, problem)
        self.peers[m.node_id] = new
        changed = old is None or (old.addr, old.state, old.meta) != (new.addr, new.state, new.meta)
        self.version += changed
        return changed

    def _decode(self, node_id: str, raw: bytes) -> tuple[NodeMeta | None, str | None]:
        if not raw:
            return None, None
        try:
            meta = decode_meta(raw)
        except DecodeError as exc:
            log.warning("member %s published unreadable metadata: %s", node_id, exc)
            return None, str(exc)
        if self.num_layers and (meta.model, meta.num_layers) != (self.model, self.num_layers):
            return None, f"serves {meta.model} ({meta.num_layers} layers)"
        if any(not 0 <= s.start < s.end <= meta.num_layers for s in meta.spans):
            return None, "invalid layer span"
        return meta, None

    def live(self) -> list[PeerView]:
        return sorted((p for p in self.peers.values() if p.live), key=lambda p: p.node_id)
