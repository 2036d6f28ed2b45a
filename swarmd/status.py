"""The status document (``GET /v1/swarm/status``, ``swarmctl status --json``): read-only, built from the node.

Fields of shared/INTERFACE.md are kept; everything else is additive. ``peers`` lists every member this
node knows except itself (tombstones included until they expire), then addresses it links to that never
became members (with the reason, e.g. another model).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .ring.router import Holder, coverage, plan_chain
from .transport.connection import WIRE_BYTES
from .types import NodeState

if TYPE_CHECKING:
    from .node import Node


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _peers(node: Node) -> list[dict[str, Any]]:
    now = time.monotonic()
    ms = node.membership
    distrusted = node.safety.distrusted()
    banned = node.attestor.banned_ids()
    out: list[dict[str, Any]] = []
    for peer in sorted(node.view.peers.values(), key=lambda p: p.node_id):
        meta = peer.meta
        serving = peer.serving_spans()
        link = node.mesh.links.get(peer.addr)
        heard = ms.last_heard.get(peer.node_id) if ms is not None else None
        skew = node.mesh.heard.get(peer.node_id, (None, False))[0]
        out.append({
            "node_id": peer.node_id, "addr": peer.addr, "state": peer.state,
            "layers": list(serving[-1]) if serving else None,
            "spans": [{"layers": [s.start, s.end], "state": s.state} for s in meta.spans] if meta else [],
            "device": meta.device if meta else None,
            "health": meta.health if meta else None,
            "load": {"sessions": meta.sessions, "queue": meta.queue} if meta else None,
            "seconds_per_layer": meta.seconds_per_layer if meta else None,
            "memory_bytes": meta.memory_bytes if meta else None,
            "last_heard_s": round(now - heard, 2) if heard is not None else None,
            "state_since_s": round(now - peer.since, 2),
            "rtt_ms": _ms(ms.rtt_s.get(peer.node_id)) if ms is not None else None,
            "incarnation": peer.incarnation,
            "clock_skew_s": None if skew is None else round(skew, 3),  # its clock minus ours, from its Hello
            "software": meta.software if meta else None,
            "connection": link.state if link is not None else "none",
            "quarantined_by": distrusted.get(peer.node_id, []),
            "identity": node.attestor.fingerprint_of(peer.node_id),
            "banned": peer.node_id in banned,
            **({"error": peer.meta_problem} if peer.meta_problem else {}),
        })
    members = {p["addr"] for p in out}
    for addr, link in sorted(node.mesh.links.items()):
        why = node.mesh.incompatible.get(addr)
        if addr not in members and link.state != "self" and why:
            out.append({"node_id": None, "addr": addr, "state": "rejected", "layers": None, "device": None,
                        "connection": link.state, "error": why})
    return out


def _verification(node: Node) -> dict[str, Any]:
    """Output checks this node ran as an entry, and who is quarantined (by whom)."""
    auditor = node.auditor
    now = time.monotonic()
    return {
        "spot_check": node.cfg.net.spot_check,
        "probation_steps": node.cfg.net.probation_steps,
        **(vars(auditor.stats) if auditor is not None else {}),
        "quarantined": [{"node_id": n, "by": by} for n, by in sorted(node.safety.distrusted().items())],
        "own_findings": [{"node_id": q.node_id, "why": q.why, "expires_in_s": round(q.until - now, 1)}
                         for q in node.trust.own(now)],
    }


def _layer_replicas(holders: list[Holder], num_layers: int) -> list[int]:
    counts = [0] * num_layers
    for h in holders:
        for layer in range(h.start, min(h.end, num_layers)):
            counts[layer] += 1
    return counts


def status_document(node: Node) -> dict[str, Any]:
    num_layers = node.loaded.num_layers if node.loaded is not None else 0
    holders = node.routing.holders()
    chain = plan_chain(holders, num_layers, prefer=node.node_id) if node.loaded is not None else None
    state = node.state
    if state == NodeState.SERVING and chain is None:
        state = NodeState.DEGRADED
    span = node.span
    replicas = _layer_replicas(holders, num_layers)
    plan = node.placer.last_plan if node.placer is not None else None
    ms = node.membership
    doc: dict[str, Any] = {
        "node_id": node.node_id,
        "state": state.value,
        "listen": node.swim_addr or node.mesh.advertised or None,
        "version": __version__,
        "model": {"name": node.model_name,
                  "num_layers": node.loaded.num_layers if node.loaded is not None else None},
        "layers": span.as_list() if span is not None else None,
        "spans": [{"layers": list(s.span), "state": s.state, "sessions": node.host.sessions(s.span)}
                  for s in node.host.slots.values()],
        "peers": _peers(node),
        "coverage": coverage(holders),
        "layer_replicas": {"min": min(replicas, default=0), "per_layer": replicas},
        "ring": [h.node_id for h in chain] if chain else [],
        "device": node.cfg.engine.device,
        "seconds_per_layer": node.profile.seconds_per_layer if node.profile is not None else None,
        "memory_budget_bytes": node.memory_budget,
        "secure": node.keyring is not None,
        "key_id": node.keyring.public_id if node.keyring is not None else None,
        "sessions": {"active": node._active, "limit": node.cfg.api.max_sessions,
                     "as_stage": node.host.session_count},
        "uptime_s": round(time.monotonic() - node._started, 1),
        "loading": node._load_progress if node.state == NodeState.STARTING else None,
        "rejected_connections": dict(node.mesh.server.rejected),
        "peer_disconnects": dict(node.mesh.server.disconnects),
        "failover": {"replays": node.replays, "last": node.last_replay},
        "verification": _verification(node),
        "identity": {"fingerprint": node.identity.fingerprint, "banned": sorted(node.attestor.banned),
                     "banned_nodes": sorted(node.attestor.banned_ids())},
        "placement": {
            "mode": "pinned" if node.pinned else "auto",
            "target": (list(t) if (t := plan.spans.get(node.node_id)) else None) if plan else None,
            "complete": plan.complete if plan else None,
            "replicated": plan.replicated if plan else None,
            "members_placed": len(plan.spans) if plan else 0,
        },
        "gossip": {
            "members": 1 + sum(p.live for p in node.view.peers.values()),
            "incarnation": ms.swim.incarnation if ms is not None else None,
            "sent": dict(ms.sent) if ms is not None else {},
            "dropped": dict(ms.swim.dropped + ms.rejected) if ms is not None else {},
            "wire_bytes": dict(WIRE_BYTES),
        },
    }
    engine = node.engine
    if engine is not None:
        b = engine.budget
        doc["kv_cache"] = {"budget_bytes": b.capacity, "used_bytes": b.used, "sessions": b.sessions}
        doc["batching"] = {"forwards": engine.batches, "steps": engine.batched_steps,
                           "max_batch_tokens": engine.max_batch_tokens,
                           "decode_graphs": engine.graph_info}
    return doc
