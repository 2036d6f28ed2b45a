"""ring/router.py: cost-aware plan_chain (compute, queue, latency, suspicion) and Holder.cost_s."""

from __future__ import annotations

import random

import pytest

from swarmd.ring.router import SUSPECT_PENALTY_S, Holder, plan_chain
from swarmd.wire.messages import Hop

L = 8


def h(node_id: str, start: int = 0, end: int = L, spl: float = 0.0, latency: float = 0.0, queue: int = 0,
      suspect: bool = False) -> Holder:
    return Holder(node_id, f"{node_id}.local:7000", start, end, spl, latency, queue, suspect)


def chain(holders: list[Holder], num_layers: int = L, prefer: str | None = None) -> list[tuple[str, int, int]] | None:
    hops = plan_chain(holders, num_layers, prefer)
    return None if hops is None else [(hop.node_id, hop.start, hop.end) for hop in hops]


def test_cost_of_a_hop() -> None:
    assert h("a", 0, 4, spl=0.01, latency=0.002, queue=2).cost_s() == pytest.approx(4 * 0.01 * 3 + 0.002)
    assert h("a", 0, 4).cost_s() == 0.0
    assert h("a", 0, 4, suspect=True).cost_s() == SUSPECT_PENALTY_S


def test_zero_costs_mean_fewest_hops() -> None:
    holders = [h("a", 0, 4), h("b", 4, 8), h("z", 0, 8)]
    assert chain(holders) == [("z", 0, 8)]


def test_faster_holder_wins_for_the_same_span() -> None:
    holders = [h("a", spl=0.02), h("b", spl=0.01), h("c", spl=0.03)]
    assert chain(holders) == [("b", 0, 8)]


def test_lower_latency_wins_at_equal_speed() -> None:
    holders = [h("a", spl=0.01, latency=0.005), h("b", spl=0.01, latency=0.001)]
    assert chain(holders) == [("b", 0, 8)]


def test_two_fast_hops_beat_one_slow_node_when_compute_dominates() -> None:
    # Slow z: 8 * 0.1 = 0.8 s; fast a + b: 2 * (4 * 0.01 + 0.001) = 0.082 s.
    holders = [h("z", spl=0.1, latency=0.001), h("a", 0, 4, spl=0.01, latency=0.001),
               h("b", 4, 8, spl=0.01, latency=0.001)]
    assert chain(holders) == [("a", 0, 4), ("b", 4, 8)]


def test_one_node_beats_two_hops_when_latency_dominates() -> None:
    # z: 8 * 0.001 + 0.001 = 0.009 s; a + b: 2 * (4 * 0.0005 + 0.05) = 0.104 s, though a and b compute faster.
    holders = [h("z", spl=0.001, latency=0.001), h("a", 0, 4, spl=0.0005, latency=0.05),
               h("b", 4, 8, spl=0.0005, latency=0.05)]
    assert chain(holders) == [("z", 0, 8)]


def test_equal_cost_prefers_fewer_hops() -> None:
    holders = [h("a", 0, 4, spl=0.01), h("b", 4, 8, spl=0.01), h("z", spl=0.01)]
    assert chain(holders) == [("z", 0, 8)]


def test_busy_holder_loses_to_an_idle_equal_one() -> None:
    holders = [h("a", spl=0.01, queue=3), h("b", spl=0.01)]
    assert chain(holders) == [("b", 0, 8)]
    # Queue depth on one stage of a split moves that stage to the idle replica only.
    split = [h("a1", 0, 4, spl=0.01, queue=1), h("b1", 0, 4, spl=0.01), h("a2", 4, 8, spl=0.01),
             h("b2", 4, 8, spl=0.01)]
    assert chain(split) == [("b1", 0, 4), ("a2", 4, 8)]


def test_queue_does_not_matter_for_unmeasured_speed() -> None:
    # With no speed known, compute is 0 whatever the queue: the id decides.
    assert chain([h("a", queue=5), h("b")]) == [("a", 0, 8)]


def test_suspect_holder_is_avoided_when_an_alternative_exists() -> None:
    holders = [h("a", spl=0.01, suspect=True), h("b", spl=0.05, latency=0.01)]
    assert chain(holders) == [("b", 0, 8)]
    split = [h("a", 0, 4, spl=0.01, suspect=True), h("c", 0, 4, spl=0.03), h("d", 4, 8, spl=0.01)]
    assert chain(split) == [("c", 0, 4), ("d", 4, 8)]


def test_suspect_holder_is_used_when_it_is_the_only_cover() -> None:
    assert chain([h("a", spl=0.01, suspect=True)]) == [("a", 0, 8)]
    holders = [h("b", 0, 4, spl=0.01), h("a", 4, 8, spl=0.01, suspect=True), h("c", 0, 2, spl=0.01)]
    assert chain(holders) == [("b", 0, 4), ("a", 4, 8)]


def test_a_longer_route_is_taken_around_a_suspect() -> None:
    # The only way around the suspect takes three hops; the suspect's penalty outweighs them.
    holders = [h("s", suspect=True), h("a", 0, 3, spl=0.01), h("b", 3, 6, spl=0.01), h("c", 6, 8, spl=0.01)]
    assert chain(holders) == [("a", 0, 3), ("b", 3, 6), ("c", 6, 8)]


def test_equal_costs_go_to_the_smallest_node_id() -> None:
    holders = [h("c", spl=0.01, latency=0.002), h("b", spl=0.01, latency=0.002), h("d", spl=0.01, latency=0.002)]
    assert chain(holders) == [("b", 0, 8)]
    assert chain(holders, prefer="d") == [("d", 0, 8)]


def test_costs_within_half_a_microsecond_tie() -> None:
    # Costs are compared in whole microseconds, so float noise never outweighs the id order.
    holders = [h("b", spl=0.01), h("a", spl=0.01 + 1e-11)]
    assert chain(holders) == [("a", 0, 8)]
    holders = [h("b", spl=0.01), h("a", spl=0.01 + 1e-6)]  # 8 us slower: b wins
    assert chain(holders) == [("b", 0, 8)]


def test_same_chain_whatever_the_input_order() -> None:
    holders = [h("a", 0, 4, spl=0.01, latency=0.001), h("b", 0, 4, spl=0.01, latency=0.001),
               h("c", 4, 8, spl=0.02), h("d", 4, 8, spl=0.01, queue=1), h("e", 0, 8, spl=0.016, latency=0.002),
               h("f", 2, 8, spl=0.001, suspect=True), h("g", 0, 2, spl=0.01)]
    # a + c = a + d = 0.121 s (tie: c by id); e alone 0.13 s; anything through f pays the suspect penalty.
    want = plan_chain(holders, L)
    assert want is not None
    rng = random.Random(3)
    for _ in range(20):
        rng.shuffle(holders)
        assert plan_chain(holders, L) == want
    assert want == [Hop("a", "a.local:7000", 0, 4), Hop("c", "c.local:7000", 4, 8)]
