"""Pipelines from node capacities: one chain's stage sizes, and grouping nodes into as many chains as fit. Pure.

Used by ``placement``; every choice is ordered by node id so each node computes the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

_EPS = 1e-9  # float slack when dividing a time budget into whole layers
_UNLIMITED = 1 << 30  # layers within an infinite time budget
_SEARCH_BUDGET = 4000  # most regroupings the local search tries: bounds the cost on large swarms


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one eligible node can hold, in layers, and how fast it runs them."""

    node_id: str
    spl: float  # seconds per layer
    mid: int  # layers it holds with neither embedding nor head (at most num_layers)
    first: int  # layers it holds together with the embedding
    last: int  # layers it holds together with the head
    whole: bool  # it holds the whole model alone


# --- one pipeline: who holds the ends, how many layers each -----------------------------------------


@dataclass(frozen=True, slots=True)
class Chain:
    bottleneck: float  # slowest stage, seconds
    spans: tuple[tuple[str, tuple[int, int]], ...]  # in layer order; group members with no layers are left out


def _within(budget: float, spl: float) -> int:
    """Whole layers a node of ``spl`` seconds per layer runs within ``budget`` seconds (inf: no limit)."""
    return _UNLIMITED if math.isinf(budget) else math.floor(budget / spl + _EPS)


def _reach(group: Sequence[Capacity], num_layers: int, budget: float) -> tuple[int, tuple[Capacity, Capacity] | None]:
    """How many layers ``group`` can chain from the embedding on if no stage may take over ``budget`` seconds.

    Returns (that many, capped at ``num_layers``; who holds the embedding and who the head if it covers the
    model, else None). ``(n, n)``: ``n`` holds everything alone (preferred: no hops).
    """
    alone = [n for n in group if n.whole and _within(budget, n.spl) >= num_layers]
    if alone:
        best = min(alone, key=lambda n: (n.spl, n.node_id))
        return num_layers, (best, best)
    total = 0
    heads: list[tuple[int, str, Capacity]] = []  # (layers lost by holding the embedding, id, node)
    tails: list[tuple[int, str, Capacity]] = []
    for n in group:
        cap = _within(budget, n.spl)
        mid, first, last = min(n.mid, cap), min(n.first, cap), min(n.last, cap)
        total += mid
        if first >= 1:
            heads.append((mid - first, n.node_id, n))
        if last >= 1:
            tails.append((mid - last, n.node_id, n))
    # Least loss first; on a tie the head is the smallest id and the tail the largest, so equal nodes
    # chain in id order.
    heads.sort(key=lambda t: t[:2])
    tails.sort(key=lambda t: t[1], reverse=True)
    tails.sort(key=lambda t: t[0])
    pairs = [
        (h[0] + t[0], hi, ti, h[2], t[2])
        for hi, h in enumerate(heads[:2])
        for ti, t in enumerate(tails[:2])
        if h[2] is not t[2]
    ]
    if not pairs or num_layers < 2:
        return 0, None
    loss, _, _, head, tail = min(pairs, key=lambda p: p[:3])
    reach = min(num_layers, total - loss)
    return reach, ((head, tail) if reach == num_layers else None)


def _ends(group: Sequence[Capacity], num_layers: int, budget: float) -> tuple[Capacity, Capacity] | None:
    return _reach(group, num_layers, budget)[1]


def _proportional(speeds: Sequence[float], low: Sequence[int], high: Sequence[int], total: int) -> list[int]:
    """Whole layers summing to ``total``, each within [low, high] and within one layer of its share.

    The share is water-filling: ``clamp(x * speed, low, high)`` with ``x`` chosen so the shares sum to
    ``total``; whole layers are the shares rounded down, then one more for the largest remainders.
    Needs ``sum(low) <= total <= sum(high)``.
    """

    def shares(x: float) -> list[float]:
        return [min(max(x * v, lo), hi) for v, lo, hi in zip(speeds, low, high, strict=True)]

    lo_x, hi_x = 0.0, max(h / v for v, h in zip(speeds, high, strict=True))
    for _ in range(100):  # bisection; the same float steps on every node
        mid = (lo_x + hi_x) / 2
        if sum(shares(mid)) < total:
            lo_x = mid
        else:
            hi_x = mid
    share = shares(hi_x)
    sizes = [min(max(math.floor(x + _EPS), lo), hi) for x, lo, hi in zip(share, low, high, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (sizes[i] - share[i], i))  # largest remainder first
    for i in by_remainder:
        if sum(sizes) >= total:
            break
        if sizes[i] < high[i]:
            sizes[i] += 1
    # Float slack could leave the sum one off; settle it within the bounds (not seen in practice).
    while sum(sizes) > total:
        sizes[next(i for i in reversed(by_remainder) if sizes[i] > low[i])] -= 1
    while sum(sizes) < total:
        sizes[next(i for i in by_remainder if sizes[i] < high[i])] += 1
    return sizes


def best_chain(group: Sequence[Capacity], num_layers: int) -> Chain | None:
    """The fastest chain over all layers that ``group`` can form (min-max stage time); None if it can't."""
    if not group:
        return None
    budgets = sorted({m * n.spl for n in group for m in range(1, max(n.mid, n.first, n.last) + 1)})
    if not budgets or _ends(group, num_layers, math.inf) is None:
        return None
    lo, hi = 0, len(budgets) - 1  # budgets[hi] is feasible: find the smallest feasible one
    while lo < hi:
        mid = (lo + hi) // 2
        if _ends(group, num_layers, budgets[mid]) is not None:
            hi = mid
        else:
            lo = mid + 1
    ends = _ends(group, num_layers, budgets[lo])
    if ends is None:  # pragma: no cover - budgets[lo] was found feasible
        return None
    head, tail = ends
    if head is tail:
        return Chain(num_layers * head.spl, ((head.node_id, (0, num_layers)),))
    order = [head, *sorted((n for n in group if n is not head and n is not tail), key=lambda n: n.node_id), tail]
    caps = [head.first, *(n.mid for n in order[1:-1]), tail.last]
    high = [min(cap, _within(budgets[lo], n.spl)) for n, cap in zip(order, caps, strict=True)]  # stay in budget
    low = [1, *(0 for _ in order[1:-1]), 1]  # the ends hold at least one layer
    sizes = _proportional([1 / n.spl for n in order], low, high, num_layers)
    spans: list[tuple[str, tuple[int, int]]] = []
    start = 0
    for n, size in zip(order, sizes, strict=True):
        if size:
            spans.append((n.node_id, (start, start + size)))
            start += size
    return Chain(max(size * n.spl for n, size in zip(order, sizes, strict=True)), tuple(spans))


# --- many pipelines: how to group the nodes ----------------------------------------------------------

_Groups = list[list[Capacity]]
_ChainOf = Callable[[Sequence[Capacity]], "Chain | None"]


def _rate(chain_of: _ChainOf, group: Sequence[Capacity]) -> float:
    chain = chain_of(group)
    return 0.0 if chain is None else 1.0 / chain.bottleneck


def _balanced(nodes: Sequence[Capacity], k: int, num_layers: int, chain_of: _ChainOf) -> _Groups:
    """Largest capacity first, each into the group holding least so far."""
    groups: _Groups = [[] for _ in range(k)]
    held = [0] * k
    for n in sorted(nodes, key=lambda n: (-n.mid, n.spl, n.node_id)):
        i = min(range(k), key=lambda j: (held[j], j))
        groups[i].append(n)
        held[i] += n.mid
    return groups


def _filled(nodes: Sequence[Capacity], k: int, num_layers: int, chain_of: _ChainOf) -> _Groups:
    """Fill one group at a time (the smallest node that completes it, else the largest); spread the rest."""
    pool = sorted(nodes, key=lambda n: (-n.mid, n.spl, n.node_id))
    groups: _Groups = []
    for _ in range(k):
        group: list[Capacity] = []
        while pool and chain_of(group) is None:
            need = num_layers - sum(n.mid for n in group)
            enough = [n for n in pool if n.mid >= need]
            pick = min(enough, key=lambda n: (n.mid, n.spl, n.node_id)) if enough else pool[0]
            pool.remove(pick)
            group.append(pick)
        groups.append(group)
    for n in sorted(pool, key=lambda n: (n.spl, n.node_id)):
        i = max(range(k), key=lambda j: (_rate(chain_of, [*groups[j], n]) - _rate(chain_of, groups[j]), -j))
        groups[i].append(n)
    return groups


def _search(
    groups: _Groups,
    value: Callable[[Sequence[Capacity]], float],
    allowed: Callable[[Sequence[Capacity]], bool],
    done: Callable[[_Groups], bool],
) -> _Groups:
    """First-improvement local search: move one node, or swap two, between two groups while the sum of
    ``value`` over them rises and both stay ``allowed``; stops when ``done`` or after _SEARCH_BUDGET tries."""
    groups = [sorted(g, key=lambda n: n.node_id) for g in groups]
    tries = 0
    while tries < _SEARCH_BUDGET and not done(groups):
        better = None
        for i, j in ((i, j) for i in range(len(groups)) for j in range(len(groups)) if i != j):
            before = value(groups[i]) + value(groups[j])
            options = [([m for m in groups[i] if m is not a], [*groups[j], a]) for a in groups[i]]
            if i < j:
                options += [
                    ([*(m for m in groups[i] if m is not a), b], [*(m for m in groups[j] if m is not b), a])
                    for a in groups[i]
                    for b in groups[j]
                ]
            for gi, gj in options:
                tries += 1
                if allowed(gi) and allowed(gj) and value(gi) + value(gj) > before + 1e-6 * abs(before):
                    better = (i, j, gi, gj)
                    break
            if better is not None or tries >= _SEARCH_BUDGET:
                break
        if better is None:
            break
        i, j, gi, gj = better
        groups[i], groups[j] = sorted(gi, key=lambda n: n.node_id), sorted(gj, key=lambda n: n.node_id)
    return groups


def pipelines(nodes: Sequence[Capacity], num_layers: int, max_pipelines: int = 0) -> list[Chain] | None:
    """As many complete chains as the nodes can form, then the grouping with the most total throughput.

    For each candidate count k (most first) two starting groupings (capacity-balanced, fill-one-at-a-time)
    are repaired by local search towards every group covering the model; the first k that works wins,
    and each grouping that works is then improved for throughput (sum of 1 / slowest stage). Heuristic:
    grouping nodes into the most chains is bin covering (NP-hard); None when not even one chain fits.
    """
    memo: dict[frozenset[str], Chain | None] = {}

    def chain_of(group: Sequence[Capacity]) -> Chain | None:
        key = frozenset(n.node_id for n in group)
        if key not in memo:
            memo[key] = best_chain(sorted(group, key=lambda n: n.node_id), num_layers)
        return memo[key]

    def short(group: Sequence[Capacity]) -> float:
        return float(_reach(group, num_layers, math.inf)[0] - num_layers)  # 0 once it covers the model

    def covers(group: Sequence[Capacity]) -> bool:
        return short(group) == 0

    def all_cover(groups: _Groups) -> bool:
        return all(map(covers, groups))

    most = min(len(nodes), sum(n.mid for n in nodes) // num_layers)
    if max_pipelines:
        most = min(most, max_pipelines)
    for k in range(most, 0, -1):
        starts = (strategy(nodes, k, num_layers, chain_of) for strategy in (_balanced, _filled))
        repaired = [_search(g, short, lambda _: True, all_cover) for g in starts]
        found = [_search(g, partial(_rate, chain_of), covers, lambda _: False) for g in repaired if all_cover(g)]
        if found:
            best = max(found, key=lambda gs: sum(_rate(chain_of, g) for g in gs))  # first wins a tie
            return [c for c in map(chain_of, best) if c is not None]
    return None


def prefix(nodes: Sequence[Capacity], num_layers: int) -> dict[str, tuple[int, int]]:
    """Best effort when no chain fits: the longest prefix of layers, the embedding with whoever loses least.

    Layer 0 stays uncovered only if no node can hold the embedding with a layer; then the prefix starts at 1.
    """
    firsts = [n for n in nodes if n.first >= 1]
    lead = min(firsts, key=lambda n: (n.mid - n.first, n.node_id)) if firsts else None
    pos = 0 if lead is not None else 1
    spans: dict[str, tuple[int, int]] = {}
    for n in ([lead] if lead is not None else []) + [n for n in nodes if n is not lead]:
        left = num_layers - pos
        if left == 0:
            break
        if pos == 0:
            take = num_layers if n.whole else min(n.first, left - 1)
        else:
            take = left if n.last >= left else min(n.mid, left - 1)
        if take > 0:
            spans[n.node_id] = (pos, pos + take)
            pos += take
    return spans
