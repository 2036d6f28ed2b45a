"""Routing as this node sees it, split from ``node.py`` (owned by ``Node`` as ``node.routing``): who holds
which serving span and at what cost, the best chain, its expected step time and its load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .ring.router import Holder, plan_chain
from .wire.messages import Hop

if TYPE_CHECKING:
    from .node import Node


class NodeRouting:
    def __init__(self, node: Node) -> None:
        self.node = node

    def holders(self) -> list[Holder]:
        """Every serving span of a live member (this node included), with what routing needs to cost it."""
        n = self.node
        spl = float(n.profile.seconds_per_layer) if n.profile is not None else 0.0
        out = [Holder(n.node_id, n.swim_addr, start, end, spl, 0.0, n.host.queue_depth)
               for start, end in n.host.serving()]
        rtt = n.membership.rtt_s if n.membership is not None else {}
        excluded = n.safety.excluded()
        for peer in n.view.live():
            link = n.mesh.links.get(peer.addr)
            if (link is not None and link.failing) or peer.node_id in excluded:
                continue
            meta = peer.meta
            for start, end in peer.serving_spans():
                assert meta is not None
                out.append(Holder(peer.node_id, peer.addr, start, end, meta.seconds_per_layer,
                                  rtt.get(peer.node_id, 0.0) / 2, meta.queue, peer.state == "suspect"))
        return out

    def plan(self, avoid: frozenset[str] = frozenset(), exclude: frozenset[str] = frozenset()) -> list[Hop] | None:
        """The best chain now without the ``exclude`` nodes; without the ``avoid`` nodes too where possible."""
        n = self.node
        if n.loaded is None:
            return None
        holders = [h for h in self.holders() if h.node_id not in exclude]
        if avoid:
            chain = plan_chain([h for h in holders if h.node_id not in avoid], n.loaded.num_layers,
                               prefer=n.node_id)
            if chain is not None:
                return chain
        return plan_chain(holders, n.loaded.num_layers, prefer=n.node_id)

    def step_estimate(self) -> float | None:
        """Expected seconds of one decode step of the current best chain (gossiped speeds, measured
        latencies); None when no chain covers the model."""
        n = self.node
        holders = self.holders()
        chain = plan_chain(holders, n.loaded.num_layers, prefer=n.node_id) if n.loaded is not None else None
        if chain is None:
            return None
        cost = {(h.node_id, h.start, h.end): h.cost_s() for h in holders}
        return sum(cost.get((hop.node_id, hop.start, hop.end), 0.0) for hop in chain)

    def chain_load(self, node_ids: Sequence[str]) -> int:
        """Sessions on the busiest of these nodes as far as this node knows: its own generations (all may
        share the chain) and each node's gossiped session count (at most 2 s old)."""
        n = self.node
        busiest = n._active
        for node_id in node_ids:
            if node_id == n.node_id:
                busiest = max(busiest, n.host.session_count)
            elif (peer := n.view.peers.get(node_id)) is not None and peer.meta is not None:
                busiest = max(busiest, peer.meta.sessions)
        return busiest
