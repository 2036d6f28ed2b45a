"""The batcher waits for sessions due back within a fraction of a forward, and for nothing else."""

from __future__ import annotations

from swarmd.engine.batch_policy import MAX_WAIT_S, next_gap, straggler_deadline


def test_no_idle_sessions_means_no_wait() -> None:
    assert straggler_deadline(10.0, [], last_forward_s=0.02) is None


def test_waits_for_a_session_that_comes_back_quickly() -> None:
    # Its last result went out at 10.000 and it usually returns 1 ms later; forwards take 20 ms.
    assert straggler_deadline(10.0002, [(10.0, 0.001)], last_forward_s=0.02) == 10.001


def test_never_waits_longer_than_the_cap() -> None:
    d = straggler_deadline(10.0, [(10.0, 0.004)], last_forward_s=0.004)  # cap: a quarter of 4 ms
    assert d is None  # its gap (4 ms) exceeds what one wait may cost (1 ms)
    d = straggler_deadline(10.0, [(10.0, 0.0049)], last_forward_s=1.0)
    assert d is not None and d - 10.0 <= MAX_WAIT_S


def test_sessions_that_travel_a_long_ring_are_not_waited_for() -> None:
    # A 4-stage ring: a session is back only after the other stages ran (60 ms), forwards take 20 ms.
    assert straggler_deadline(10.0, [(9.99, 0.06)], last_forward_s=0.02) is None


def test_a_session_long_overdue_has_probably_finished() -> None:
    assert straggler_deadline(10.0, [(9.9, 0.001)], last_forward_s=0.02) is None


def test_gap_estimate_follows_what_it_sees() -> None:
    g = next_gap(None, 0.01)
    assert g == 0.01
    for _ in range(20):
        g = next_gap(g, 0.001)
    assert abs(g - 0.001) < 1e-4
