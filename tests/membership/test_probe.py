"""membership/probe.py: the steps of one probe period and the randomised round-robin order."""

from __future__ import annotations

import random
from collections import Counter

from swarmd.membership.probe import Probe, ProbeOrder

INTERVAL, TIMEOUT = 0.5, 0.2


def test_a_period_asks_helpers_at_the_timeout_then_suspects_at_its_end() -> None:
    p = Probe(seq=1, target="b", sent_at=10.0)
    assert p.due(INTERVAL, TIMEOUT) == 10.2
    assert p.step(10.1, INTERVAL, TIMEOUT) == "wait"
    assert p.step(10.2, INTERVAL, TIMEOUT) == "indirect"
    assert p.due(INTERVAL, TIMEOUT) == 10.5  # helpers get the rest of the period
    assert p.step(10.4, INTERVAL, TIMEOUT) == "wait"
    assert p.step(10.5, INTERVAL, TIMEOUT) == "suspect"


def test_late_helpers_still_get_the_rest_of_a_period() -> None:
    p = Probe(seq=1, target="b", sent_at=10.0)
    assert p.step(10.35, INTERVAL, TIMEOUT) == "indirect"  # the driver woke late, but within an interval
    assert p.step(10.6, INTERVAL, TIMEOUT) == "wait"
    assert p.step(10.65, INTERVAL, TIMEOUT) == "suspect"


def test_a_stalled_prober_abandons_instead_of_suspecting() -> None:
    p = Probe(seq=1, target="b", sent_at=10.0)
    assert p.step(10.71, INTERVAL, TIMEOUT) == "abandon"
    q = Probe(seq=2, target="b", sent_at=10.0)
    assert q.step(10.2, INTERVAL, TIMEOUT) == "indirect"
    assert q.step(11.01, INTERVAL, TIMEOUT) == "abandon"


def test_round_robin_visits_everyone_once_per_round_in_shuffled_order() -> None:
    members = [f"n{i}" for i in range(10)]
    order = ProbeOrder(random.Random(1))
    rounds = [[order.next(lambda k: True, lambda: list(members)) for _ in members] for _ in range(3)]
    assert all(sorted(r) == members for r in rounds)  # type: ignore[type-var]
    assert rounds[0] != rounds[1]  # reshuffled


def test_round_robin_skips_the_departed_and_reaches_a_newcomer_within_the_round() -> None:
    members = {f"n{i}" for i in range(6)}
    order = ProbeOrder(random.Random(2))
    first = order.next(lambda k: k in members, lambda: sorted(members))
    members.discard("n3" if first != "n3" else "n4")
    members.add("new")
    order.insert("new")
    rest = [order.next(lambda k: k in members, lambda: sorted(members)) for _ in range(len(members) - 1)]
    assert sorted([first, *rest]) == sorted(members)  # type: ignore[type-var]


def test_round_robin_with_nobody_to_probe() -> None:
    order = ProbeOrder(random.Random(3))
    assert order.next(lambda k: True, lambda: []) is None
    seen = Counter(order.next(lambda k: True, lambda: ["x"]) for _ in range(3))
    assert seen == {"x": 3}
