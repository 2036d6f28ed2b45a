"""ring/router.py: plan_chain picks the fewest hops deterministically; even_split and coverage are pure maths."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.ring.router import Holder, coverage, even_split, plan_chain
from swarmd.wire.messages import Hop


def h(node_id: str, start: int, end: int) -> Holder:
    return Holder(node_id, f"{node_id}.local:7000", start, end)


def spans(chain: list[Hop] | None) -> list[tuple[str, int, int]] | None:
    return None if chain is None else [(hop.node_id, hop.start, hop.end) for hop in chain]


def test_single_holder_of_all_layers() -> None:
    chain = plan_chain([h("a", 0, 12)], 12)
    assert chain == [Hop("a", "a.local:7000", 0, 12)]


def test_contiguous_three_way_split() -> None:
    holders = [h("c", 8, 12), h("a", 0, 4), h("b", 4, 8)]
    assert spans(plan_chain(holders, 12)) == [("a", 0, 4), ("b", 4, 8), ("c", 8, 12)]


def test_fewest_hops_wins_over_a_split() -> None:
    holders = [h("a", 0, 4), h("b", 4, 8), h("c", 8, 12), h("z", 0, 12)]
    assert spans(plan_chain(holders, 12)) == [("z", 0, 12)]
    assert spans(plan_chain(holders, 12, prefer="a")) == [("z", 0, 12)]  # prefer never costs a hop


def test_fewest_hops_among_splits() -> None:
    holders = [h("a", 0, 3), h("b", 3, 6), h("c", 6, 9), h("d", 9, 12), h("e", 0, 6), h("f", 6, 12)]
    assert spans(plan_chain(holders, 12)) == [("e", 0, 6), ("f", 6, 12)]


def test_furthest_reach_is_not_always_fewest_hops() -> None:
    holders = [h("a", 0, 8), h("b", 8, 10), h("c", 10, 12), h("d", 0, 6), h("e", 6, 12)]
    assert spans(plan_chain(holders, 12)) == [("d", 0, 6), ("e", 6, 12)]


def test_tie_prefers_prefer_then_smallest_id() -> None:
    holders = [h("c", 0, 12), h("b", 0, 12), h("d", 0, 12)]
    assert spans(plan_chain(holders, 12)) == [("b", 0, 12)]
    assert spans(plan_chain(holders, 12, prefer="d")) == [("d", 0, 12)]
    assert spans(plan_chain(holders, 12, prefer="nobody")) == [("b", 0, 12)]


def test_tie_at_every_boundary_of_a_split() -> None:
    holders = [h("b1", 0, 6), h("a1", 0, 6), h("b2", 6, 12), h("a2", 6, 12)]
    assert spans(plan_chain(holders, 12)) == [("a1", 0, 6), ("a2", 6, 12)]
    assert spans(plan_chain(holders, 12, prefer="b2")) == [("a1", 0, 6), ("b2", 6, 12)]


def test_tie_between_chains_of_different_shapes_honours_prefer() -> None:
    holders = [h("p", 0, 3), h("q", 3, 4), h("a", 0, 1), h("b", 1, 4)]
    assert spans(plan_chain(holders, 4, prefer="p")) == [("p", 0, 3), ("q", 3, 4)]


def test_gap_gives_none() -> None:
    assert plan_chain([h("a", 0, 4), h("c", 8, 12)], 12) is None
    assert plan_chain([h("a", 0, 11)], 12) is None
    assert plan_chain([h("a", 1, 12)], 12) is None
    assert plan_chain([], 12) is None


def test_overlapping_spans_that_cannot_chain() -> None:
    # Every layer is held by someone, but no span starts where another ends.
    assert plan_chain([h("a", 0, 6), h("b", 4, 12)], 12) is None
    assert plan_chain([h("a", 0, 5), h("b", 3, 9), h("c", 7, 12)], 12) is None


def test_spans_out_of_range_are_ignored() -> None:
    bad = [h("x", -1, 12), h("y", 0, 13), h("z", 6, 6), h("w", 7, 5), h("v", 12, 14)]
    assert plan_chain(bad, 12) is None
    assert spans(plan_chain([*bad, h("a", 0, 6), h("b", 6, 12)], 12)) == [("a", 0, 6), ("b", 6, 12)]


def test_addr_is_carried_into_the_hop() -> None:
    chain = plan_chain([Holder("a", "10.0.0.1:7000", 0, 2), Holder("b", "[fe80::1]:7000", 2, 4)], 4)
    assert chain == [Hop("a", "10.0.0.1:7000", 0, 2), Hop("b", "[fe80::1]:7000", 2, 4)]


Swarm = tuple[int, list[Holder]]


@st.composite
def swarms(draw: st.DrawFn) -> Swarm:
    num_layers = draw(st.integers(1, 16))
    n = draw(st.integers(0, 10))
    holders = []
    for i in range(n):
        start = draw(st.integers(0, num_layers - 1))
        end = draw(st.integers(start + 1, num_layers))
        holders.append(h(f"n{i:02d}", start, end))
    parts = draw(st.integers(0, num_layers))  # often add an even split too, so that many swarms are covered
    holders += [h(f"s{i:02d}", *even_split(num_layers, parts, i)) for i in range(parts)]
    return num_layers, holders


@settings(max_examples=200, deadline=None, derandomize=True)
@given(swarms(), st.randoms(use_true_random=False), st.sampled_from([None, "n00", "n03", "s01"]))
def test_deterministic_across_orderings(swarm: Swarm, rnd: random.Random, prefer: str | None) -> None:
    num_layers, holders = swarm
    shuffled = list(holders)
    rnd.shuffle(shuffled)
    chain = plan_chain(holders, num_layers, prefer)
    assert plan_chain(shuffled, num_layers, prefer) == chain
    assert plan_chain(reversed(holders), num_layers, prefer) == chain  # any iterable will do
    if chain is not None:  # a chain is contiguous from 0 to num_layers, using holders as they are
        assert chain[0].start == 0 and chain[-1].end == num_layers
        assert all(a.end == b.start for a, b in zip(chain, chain[1:], strict=False))
        assert all(Holder(x.node_id, x.addr, x.start, x.end) in holders for x in chain)
        assert len({x.node_id for x in chain}) == len(chain)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(swarms())
def test_chain_has_fewest_hops(swarm: Swarm) -> None:
    num_layers, holders = swarm
    reach = {0: 0}  # breadth-first search over layer boundaries: fewest hops to each
    frontier = [0]
    while frontier:
        nxt = []
        for pos in frontier:
            for x in holders:
                if x.start == pos and x.end not in reach:
                    reach[x.end] = reach[pos] + 1
                    nxt.append(x.end)
        frontier = nxt
    chain = plan_chain(holders, num_layers)
    assert (chain is None) == (num_layers not in reach)
    if chain is not None:
        assert len(chain) == reach[num_layers]


# --- even_split ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_layers", "nodes", "expected"), [
    (12, 3, [(0, 4), (4, 8), (8, 12)]),
    (10, 3, [(0, 4), (4, 7), (7, 10)]),
    (5, 1, [(0, 5)]),
    (24, 5, [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]),
])
def test_even_split_examples(num_layers: int, nodes: int, expected: list[tuple[int, int]]) -> None:
    assert [even_split(num_layers, nodes, i) for i in range(nodes)] == expected


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 200), st.integers(1, 40))
def test_even_split_properties(num_layers: int, nodes: int) -> None:
    parts = [even_split(num_layers, nodes, i) for i in range(nodes)]
    assert parts[0][0] == 0 and parts[-1][1] == num_layers
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    sizes = [e - s for s, e in parts]
    assert sum(sizes) == num_layers
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # earlier nodes get the extra layer


@pytest.mark.parametrize(("nodes", "index"), [(3, 3), (3, -1), (0, 0), (1, 5)])
def test_even_split_bad_index(nodes: int, index: int) -> None:
    with pytest.raises(ValueError):
        even_split(12, nodes, index)


# --- coverage ------------------------------------------------------------------------------------


def test_coverage_counts_replicas_per_distinct_span() -> None:
    holders = [h("a", 6, 12), h("b", 0, 6), h("c", 0, 6), h("d", 0, 12), h("e", 6, 12), h("f", 0, 6)]
    assert coverage(holders) == [
        {"layers": [0, 6], "replicas": 3},
        {"layers": [0, 12], "replicas": 1},
        {"layers": [6, 12], "replicas": 2},
    ]
    assert coverage(reversed(holders)) == coverage(holders)
    assert coverage([]) == []
