"""Pure routing maths: which chain of spans carries a session, the even split, and coverage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..wire.messages import Hop


@dataclass(frozen=True)
class Holder:
    """A live node that holds layers ``[start, end)``."""

    node_id: str
    addr: str
    start: int
    end: int


def plan_chain(holders: Iterable[Holder], num_layers: int, prefer: str | None = None) -> list[Hop] | None:
    """Contiguous spans from layer 0 to ``num_layers``, fewest hops first; None when the layers are not covered.

    At each boundary the holder that reaches furthest wins; ties go to ``prefer`` (the entry node, saving a
    hop on the wire), then to the smallest node id, so every node plans the same chain from the same view.
    """
    by_start: dict[int, list[Holder]] = {}
    for h in holders:
        if 0 <= h.start < h.end <= num_layers:
            by_start.setdefault(h.start, []).append(h)
    # Dynamic programming over boundaries: the best path to each layer index, compared by
    # (hops, then each hop's (-end, not preferred, node id) in order).
    def key(h: Holder) -> tuple[int, bool, str]:
        return (-h.end, h.node_id != prefer, h.node_id)

    best: dict[int, tuple[int, list[tuple[int, bool, str]], list[Holder]]] = {0: (0, [], [])}
    for pos in range(num_layers):
        if pos not in best:
            continue
        hops, keys, path = best[pos]
        for h in by_start.get(pos, []):
            cand = (hops + 1, [*keys, key(h)], [*path, h])
            cur = best.get(h.end)
            if cur is None or cand[:2] < cur[:2]:
                best[h.end] = cand
    if num_layers not in best:
        return None
    return [Hop(h.node_id, h.addr, h.start, h.end) for h in best[num_layers][2]]


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
