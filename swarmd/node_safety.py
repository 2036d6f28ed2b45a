"""The node's trust concerns, split from ``node.py`` (owned by ``Node`` as ``node.safety``):
who is quarantined for wrong outputs, who is banned by identity, and the hooks routing, placement,
links and the output checks use to leave them out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .config import NodeConfig, default_state_dir
from .errors import ConfigError, InvalidRequest, NotFound
from .wire.identity import Identity, fingerprint, hello_proof, load_or_create, verify
from .wire.messages import Hello, Hop, NodeMeta

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)
MAX_BANS_PUBLISHED = 32  # fingerprints one node publishes in its metadata (newest kept)


def node_identity(cfg: NodeConfig, node_id: str) -> Identity:
    """The identity key: ``--identity-file``, else one per ``--node-id`` in the state directory, else new
    for this run. A key that cannot be stored is replaced by a new one for this run, with a warning."""
    path = cfg.net.identity_file
    if path is None and cfg.node_id:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.node_id)
        path = default_state_dir() / f"identity-{safe}.key"
    if path is None:
        return Identity.generate()
    try:
        return load_or_create(path)
    except OSError as exc:
        if cfg.net.identity_file is not None:
            raise ConfigError(f"cannot read or create identity file {path}: {exc}") from None
        log.warning("cannot keep an identity in %s (%s): using a new key for this run; peers that knew this "
                    "node id under another key refuse it until they restart", path, exc)
        return Identity.generate()


class NodeSafety:
    """Reads the node's view and holders; changes only what it owns (quarantines, bans) and asks the node
    to publish and re-place when they change."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._ban_order: list[str] = []  # banned fingerprints, oldest first (the newest are published)

    # --- quarantine (output verification) -----------------------------------------------------------

    def distrusted(self) -> dict[str, list[str]]:
        """Members not to route through (node id -> who quarantined it): own findings and gossiped ones."""
        claims = {p.node_id: p.meta.quarantined for p in self.node.view.live() if p.meta is not None}
        return self.node.trust.distrusted(time.monotonic(), self.node.node_id, claims)

    def excluded(self) -> set[str]:
        """Node ids routing and placement leave out: quarantined or banned."""
        return set(self.distrusted()) | self.node.attestor.banned_ids()

    def replicas(self, start: int, end: int, leave_out: frozenset[str]) -> list[Hop]:
        """Serving holders of exactly ``[start, end)`` outside ``leave_out``, cheapest first (shadows, referees)."""
        found = [h for h in self.node.routing.holders()
                 if (h.start, h.end) == (start, end) and h.node_id not in leave_out]
        return [Hop(h.node_id, h.addr, start, end) for h in sorted(found, key=lambda h: h.cost_s())]

    def audit_dtype(self, chain: Sequence[Hop]) -> str:
        """The tolerance class of a chain's outputs: float32 only if every stage runs in 4-byte floats."""
        widths = {int(self.node.profile.dtype_bytes) if self.node.profile is not None else 4}
        widths |= {p.meta.dtype_bytes for h in chain if (p := self.node.view.peers.get(h.node_id)) and p.meta}
        return "float32" if widths == {4} else "bfloat16"

    def dissent(self, node_id: str, why: str) -> None:
        log.warning("quarantining %s for %.0fs: %s", node_id, self.node.trust.quarantine_s, why)
        self.node.trust.quarantine(node_id, time.monotonic(), why)
        self.node._publish()
        if self.node.placer is not None:
            self.node.placer.view_changed()

    # --- bans (identity) --------------------------------------------------------------------------------

    def ban(self, node_id: str) -> dict[str, Any]:
        """``swarmctl ban``: refuse this member's identity key here, and tell the swarm (it spreads)."""
        fp = self.node.attestor.fingerprint_of(node_id)
        if fp is None:
            raise NotFound(f"no member {node_id!r} with a known identity")
        if node_id == self.node.node_id:
            raise InvalidRequest("a node cannot ban itself")
        self.add_bans([fp], f"by operator of {self.node.node_id}")
        return {"banned": node_id, "fingerprint": fp}

    def add_bans(self, fingerprints: Sequence[str], source: str) -> None:
        new = self.node.attestor.ban(fingerprints)
        if not new:
            return
        self._ban_order.extend(sorted(new))
        for node_id in sorted(self.node.attestor.banned_ids()):
            peer = self.node.view.peers.get(node_id)
            log.warning("member %s is banned (%s)", node_id, source)
            self.node.entry.peer_lost(node_id)
            self.node.mesh.server.drop_node(node_id)
            if peer is not None and (link := self.node.mesh.forget(peer.addr)) is not None:
                self.node._spawn(link.stop())
        self.node._publish()
        if self.node.placer is not None:
            self.node.placer.view_changed()

    def adopt_bans(self, meta: NodeMeta | None, member: str) -> None:
        """Bans another member publishes become this node's own (and are published on): a ban spreads."""
        if meta is not None and meta.banned and member not in self.node.attestor.banned_ids():
            self.add_bans(meta.banned, f"published by {member}")

    def published_bans(self) -> tuple[str, ...]:
        return tuple(self._ban_order[-MAX_BANS_PUBLISHED:])

    def sign_hello(self, hello: Hello, binding: bytes) -> Hello:
        ident = self.node.identity
        return replace(hello, identity=ident.public, proof=ident.sign(hello_proof(binding, hello.node_id)))

    def refuse_link(self, hello: Hello, binding: bytes) -> str | None:
        """Why a peer's Hello is refused: no valid proof of an identity key for this connection, a banned
        key, or a node id that the swarm knows under another key (forged or duplicated)."""
        if not verify(hello.identity, hello_proof(binding, hello.node_id), hello.proof):
            return "no valid proof of an identity key"
        if fingerprint(hello.identity) in self.node.attestor.banned:
            return "banned identity"
        pinned = self.node.attestor.pin(hello.node_id, hello.identity)  # the first key seen is pinned
        if pinned != hello.identity:
            return f"node id {hello.node_id!r} is known under another identity key (forged or duplicated)"
        return None
