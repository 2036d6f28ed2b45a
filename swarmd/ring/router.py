"""Pure routing maths: which chain of spans carries a session, the even split, and coverage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..wire.messages import Hop

# A suspect member is used only when nothing else covers its layers: it costs this much more.
SUSPECT_PENALTY_S = 10.0


@dataclass(frozen=True)
class Holder:
    """A live node that holds layers ``[start, end)``, with what the entry knows of its speed.

    ``seconds_per_layer`` (gossiped calibration), ``queue`` (gossiped forwards waiting at its stages) and
    ``latency_s`` (half the entry's measured round trip to it; 0 for the entry itself) give a hop's
    expected cost; zeros mean unknown and make the choice purely by hop count.
    """

    node_id: str
    addr: str
    start: int
    end: int
    seconds_per_layer: float = 0.0
    latency_s: float = 0.0
    queue: int = 0
    suspect: bool = False

    def cost_s(self) -> float:
        compute = (self.end - self.start) * self.seconds_per_layer * (1 + self.queue)
        return compute + self.latency_s + (SUSPECT_PENALTY_S if self.suspect else 0.0)


def plan_chain(holders: Iterable[Holder], num_layers: int, prefer: str | None = None) -> list[Hop] | None:
    """Contiguous spans from layer 0 to ``num_layers`` with the least expected step time; None when no chain
    covers the layers.

    Expected step time is the sum of the hops' ``cost_s`` (compute at the holder's speed, slowed by its
    queue, plus the link to it), compared in microseconds; ties go to fewer hops, then at each boundary to
    the holder that reaches furthest, to ``prefer`` (the entry node, saving a hop on the wire), then to the
    smallest node id, so nodes with the same view plan the same chain.
    """
    by_start: dict[int, list[Holder]] = {}
    for h in holders:
        if 0 <= h.start < h.end <= num_layers:
            by_start.setdefault(h.start, []).append(h)
    # Dynamic programming over boundaries: the best path to each layer index, compared by
    # (cost in microseconds, hops, then each hop's (-end, not preferred, node id) in order).
    def key(h: Holder) -> tuple[int, bool, str]:
        return (-h.end, h.node_id != prefer, h.node_id)

    best: dict[int, tuple[int, int, list[tuple[int, bool, str]], list[Holder]]] = {0: (0, 0, [], [])}
    for pos in range(num_layers):
        if pos not in best:
            continue
        cost, hops, keys, path = best[pos]
        for h in by_start.get(pos, []):
            cand = (cost + round(h.cost_s() * 1e6), hops + 1, [*keys, key(h)], [*path, h])
            cur = best.get(h.end)
            if cur is None or cand[:3] < cur[:3]:
                best[h.end] = cand
    if num_layers not in best:
        return None
    return [Hop(h.node_id, h.addr, h.start, h.end) for h in best[num_layers][3]]


def even_split(num_layers: int, nodes: int, index: int) -> tuple[int, int]:
    """Span of node ``index`` of ``nodes`` when the layers are shared out evenly (earlier nodes get the extra)."""
    if not 0 <= index < nodes:
        raise ValueError(f"index {index} not in [0, {nodes})")
    base, extra = divmod(num_layers, nodes)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def coverage(holders: Iterable[Holder]) -> list[dict[str, object]]:
    """Distinct spans held by live nodes, with how many nodes hold each."""
    counts: dict[tuple[int, int], int] = {}
    for h in holders:
        counts[(h.start, h.end)] = counts.get((h.start, h.end), 0) + 1
    return [{"layers": [s, e], "replicas": n} for (s, e), n in sorted(counts.items())]
