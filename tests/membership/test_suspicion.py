"""membership/suspicion.py: the timing maths, checked against memberlist's own test values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmd.membership.suspicion import (
    Suspicion,
    confirmed_timeout,
    expected_confirmations,
    node_scale,
    push_pull_scale,
    retransmit_limit,
    suspicion_bounds,
    suspicion_timeout,
)


@pytest.mark.parametrize(("n", "want"), [(0, 2.0), (1, 2.0), (5, 2.0), (10, 2.0), (100, 4.0), (1000, 6.0)])
def test_suspicion_timeout_scales_with_log10_n_and_never_below_one_unit(n: int, want: float) -> None:
    # suspicion_mult 4, probe interval 0.5 s: 4 * max(1, log10(n)) * 0.5
    assert suspicion_timeout(4, n, 0.5) == pytest.approx(want)


def test_suspicion_timeout_for_64_members_on_lan_defaults() -> None:
    assert suspicion_timeout(4, 64, 0.5) == pytest.approx(4 * math.log10(64) * 0.5)  # ~3.6 s


def test_bounds_are_lo_and_max_mult_times_lo() -> None:
    lo, hi = suspicion_bounds(4, 6, 64, 0.5)
    assert lo == pytest.approx(suspicion_timeout(4, 64, 0.5))
    assert hi == pytest.approx(6 * lo)


@pytest.mark.parametrize(("mult", "n", "k"), [(4, 64, 2), (4, 4, 2), (4, 3, 0), (4, 1, 0), (3, 3, 1), (2, 100, 0)])
def test_expected_confirmations(mult: int, n: int, k: int) -> None:
    assert expected_confirmations(mult, n) == k


def test_confirmed_timeout_matches_memberlist() -> None:
    # memberlist suspicion_test.go: k = 3, min = 2 s, max = 30 s.
    assert confirmed_timeout(2, 30, 3, 0) == pytest.approx(30.0)
    assert confirmed_timeout(2, 30, 3, 1) == pytest.approx(16.0)
    assert confirmed_timeout(2, 30, 3, 2) == pytest.approx(7.81, abs=1e-2)
    assert confirmed_timeout(2, 30, 3, 3) == pytest.approx(2.0)
    assert confirmed_timeout(2, 30, 3, 7) == pytest.approx(2.0)  # extra confirmations change nothing
    assert confirmed_timeout(2, 30, 0, 0) == pytest.approx(2.0)  # none expected: the short timeout


@given(lo=st.floats(0.01, 100), spread=st.floats(1, 10), k=st.integers(0, 20), c=st.integers(0, 25))
def test_confirmed_timeout_stays_in_bounds_and_shrinks(lo: float, spread: float, k: int, c: int) -> None:
    hi = lo * spread
    t = confirmed_timeout(lo, hi, k, c)
    assert lo <= t <= hi + 1e-9
    assert confirmed_timeout(lo, hi, k, c + 1) <= t + 1e-9


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, 4), (9, 4), (10, 8), (64, 8), (99, 8), (100, 12)])
def test_retransmit_limit(n: int, want: int) -> None:
    assert retransmit_limit(4, n) == want


def test_push_pull_scale_keeps_full_state_bytes_per_second_constant_beyond_eight() -> None:
    assert all(push_pull_scale(1.0, n) == 1.0 for n in range(9))
    assert push_pull_scale(5.0, 16) == 10.0 and push_pull_scale(5.0, 64) == 40.0
    # n members per exchange / interval: the same for every n above the threshold
    assert {n / push_pull_scale(5.0, n) for n in (8, 16, 32, 64, 1024)} == {8 / 5.0}


def test_suspicion_floor_raises_lo_but_not_the_confirmation_free_bound() -> None:
    assert suspicion_bounds(4, 6.0, 4, 0.5, floor_s=3.5) == (3.5, 12.0)
    assert suspicion_bounds(4, 6.0, 4, 0.5) == (2.0, 12.0)
    lo, hi = suspicion_bounds(4, 6.0, 10_000, 0.5, floor_s=3.5)
    assert lo == pytest.approx(8.0) and hi == pytest.approx(48.0)  # the floor only matters in small swarms
    assert suspicion_bounds(4, 1.0, 4, 0.5, floor_s=3.5) == (3.5, 3.5)  # hi never below lo


def test_node_scale_floor() -> None:
    assert node_scale(0) == node_scale(1) == node_scale(10) == 1.0
    assert node_scale(1000) == pytest.approx(3.0)


def test_suspicion_counts_distinct_confirmations_up_to_k() -> None:
    s = Suspicion(start=10.0, lo=2.0, hi=30.0, k=3, accuser="a")
    assert s.deadline == pytest.approx(40.0)
    assert not s.confirm("a")  # the accuser does not confirm itself
    assert s.confirm("b")
    assert not s.confirm("b")  # nor does anyone twice
    assert s.deadline == pytest.approx(26.0)
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline == pytest.approx(12.0)
    assert not s.confirm("e")  # k reached: nothing more to shorten
    assert s.confirmers == {"b", "c", "d"}
