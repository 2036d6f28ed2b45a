"""Members this node will not route through: quarantined for computing wrong outputs (found by this
node's own checks, or published by another member), or banned by an operator. Pure: ``now`` in.

A quarantine is a member's own finding: it publishes the node ids it quarantined in its ``NodeMeta``,
signed like the rest of its state, for ``quarantine_s``. Every node avoids the union of what live,
trusted members publish. A dishonest member can therefore steer traffic away from an honest one (an
availability cost, visible in status with who said it), never into a wrong answer; ``swarmctl ban``
is the operator's answer to such a member.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_PUBLISHED = 16  # quarantines one node publishes (newest kept): bounds its metadata


@dataclass(frozen=True)
class Quarantine:
    node_id: str
    until: float  # on this node's clock
    why: str


class Trust:
    def __init__(self, quarantine_s: float) -> None:
        self.quarantine_s = quarantine_s
        self._own: dict[str, Quarantine] = {}
        self.found = 0  # quarantines this node decided (for status and metrics)

    def quarantine(self, node_id: str, now: float, why: str) -> None:
        self._own[node_id] = Quarantine(node_id, now + self.quarantine_s, why)
        self.found += 1
        while len(self._own) > MAX_PUBLISHED:
            oldest = min(self._own.values(), key=lambda q: q.until)
            del self._own[oldest.node_id]

    def own(self, now: float) -> list[Quarantine]:
        for q in [q for q in self._own.values() if q.until <= now]:
            del self._own[q.node_id]
        return sorted(self._own.values(), key=lambda q: q.node_id)

    def published(self, now: float) -> tuple[str, ...]:
        return tuple(q.node_id for q in self.own(now))

    def distrusted(self, now: float, self_id: str, claims: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
        """Node id -> who quarantines it: this node's own findings and every live member's published
        ``member -> node ids`` claims. Claims are not weighed against each other: a member accused in
        return by the member it caught stays avoided too (availability lost, never correctness)."""
        out: dict[str, list[str]] = {q.node_id: [self_id] for q in self.own(now)}
        for member, named in sorted(claims.items()):
            for node_id in named:
                if node_id != member and member not in out.get(node_id, []):
                    out.setdefault(node_id, []).append(member)
        return out
