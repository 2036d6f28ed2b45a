"""systemd's watchdog: the pure tick decision on a fake clock, WATCHDOG_USEC parsing, and a real loop that is
blocked (no ping while it is stuck, none for the late tick right after, pings again afterwards)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from swarmd.clock import FakeClock
from swarmd.sdnotify import Notifier, watchdog_interval
from swarmd.watchdog import Watchdog, WatchdogTiming, decide

T = WatchdogTiming(30.0)  # WatchdogSec=30s: a tick every 10 s, a tick over 15 s late means stuck


def test_timing_defaults() -> None:
    assert T.period_s == pytest.approx(10.0)
    assert T.max_late_s == pytest.approx(15.0)
    # A tolerated stall still gives the next ping within the interval.
    assert T.period_s + T.max_late_s < T.interval_s


def test_on_time_and_slightly_late_ticks_ping() -> None:
    early = decide(T, due=100.0, now=99.0)
    assert early.ping and early.late_s == 0.0  # early counts as on time
    tick = decide(T, due=100.0, now=100.0)
    assert tick.ping and tick.late_s == 0.0 and tick.reason == ""
    tick = decide(T, due=100.0, now=114.9)
    assert tick.ping and tick.late_s == pytest.approx(14.9)


def test_a_stuck_loop_skips_the_ping() -> None:
    tick = decide(T, due=100.0, now=115.5)
    assert not tick.ping
    assert "stuck" in tick.reason and "15.500s late" in tick.reason


def test_unhealthy_skips_the_ping() -> None:
    tick = decide(T, due=100.0, now=100.0, healthy=False)
    assert not tick.ping and tick.reason == "health check failed"


def test_next_tick_follows_the_wake_up_not_the_due_time() -> None:
    """After a stall there is no burst of catch-up pings: the next tick is one period after the late one."""
    tick = decide(T, due=100.0, now=160.0)
    assert tick.next_due == pytest.approx(170.0)


def simulate(timing: WatchdogTiming, stalls: dict[int, float], ticks: int = 12) -> list[float]:
    """The driver's loop on a fake clock: tick i runs ``stalls.get(i, 0)`` seconds late. Returns ping times."""
    clock = FakeClock(1000.0)
    due = clock.now()
    pings: list[float] = []
    for i in range(ticks):
        clock.advance(max(0.0, due - clock.now()) + stalls.get(i, 0.0))
        tick = decide(timing, due, clock.now())
        if tick.ping:
            pings.append(clock.now())
        due = tick.next_due
    return pings


def test_fake_clock_steady_pings() -> None:
    pings = simulate(T, {})
    assert len(pings) == 12
    assert all(b - a == pytest.approx(T.period_s) for a, b in zip(pings, pings[1:], strict=False))


@pytest.mark.parametrize("stall", [1.0, 7.5, 14.0])
def test_fake_clock_tolerated_stall_keeps_systemd_happy(stall: float) -> None:
    pings = simulate(T, {4: stall})
    assert len(pings) == 12
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < T.interval_s


@pytest.mark.parametrize("stall", [16.0, 40.0])
def test_fake_clock_stuck_loop_lets_the_watchdog_fire(stall: float) -> None:
    pings = simulate(T, {4: stall})
    assert len(pings) == 11  # tick 4 skipped
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) > T.interval_s  # systemd would act


def test_fake_clock_a_loop_that_is_mostly_stuck_never_pings() -> None:
    """A loop that wakes now and then would still ping in time if pings were unconditional."""
    assert simulate(T, {i: 16.0 for i in range(1, 12)}) == simulate(T, {})[:1]


# --- WATCHDOG_USEC / WATCHDOG_PID --------------------------------------------------------------------


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == pytest.approx(30.0)
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "42"}, pid=42) == pytest.approx(1.5)
    assert watchdog_interval({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "43"}, pid=42) is None  # not us
    assert watchdog_interval({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "x"}, pid=42) is None


def test_notifier_watchdog_interval_needs_a_notify_socket(short_tmp: Path) -> None:
    assert Notifier("", watchdog_s=2.0).watchdog_interval is None
    assert Notifier(str(short_tmp / "n.sock"), watchdog_s=2.0).watchdog_interval == 2.0


def test_notifier_sends_watchdog_datagram(short_tmp: Path) -> None:
    path = short_tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        Notifier(str(path)).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


# --- the driver on a real event loop ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.times: list[float] = []

    def watchdog(self) -> None:
        self.times.append(time.monotonic())


async def test_blocked_loop_sends_no_ping(caplog: pytest.LogCaptureFixture) -> None:
    timing = WatchdogTiming(0.6)  # a tick every 0.2 s; over 0.3 s late means stuck
    rec = Recorder()
    dog = Watchdog(rec, timing)
    caplog.set_level(logging.WARNING, logger="swarmd.watchdog")
    task = asyncio.create_task(dog.run())
    try:
        await asyncio.sleep(0.5)
        before = len(rec.times)
        blocked_at = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 -- blocking the loop on purpose
        unblocked_at = time.monotonic()
        await asyncio.sleep(0.7)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    assert before >= 2
    # Nothing while blocked, and the late tick right after the block is skipped too.
    assert not [t for t in rec.times if blocked_at <= t < unblocked_at + 0.1], (blocked_at, unblocked_at, rec.times)
    assert [t for t in rec.times if t >= unblocked_at + 0.1], "pings resume once the loop runs again"
    assert dog.skipped >= 1
    assert any("stuck" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_unhealthy_and_failing_health_checks_skip(caplog: pytest.LogCaptureFixture) -> None:
    state = {"healthy": False}

    def healthy() -> bool:
        if state["healthy"] is None:
            raise RuntimeError("boom")
        return bool(state["healthy"])

    rec = Recorder()
    dog = Watchdog(rec, WatchdogTiming(0.15), healthy)
    task = asyncio.create_task(dog.run())
    try:
        await asyncio.sleep(0.2)
        assert rec.times == [] and dog.skipped >= 2
        state["healthy"] = None  # type: ignore[assignment]
        await asyncio.sleep(0.15)
        assert rec.times == []
        assert any("health check raised" in r.getMessage() for r in caplog.records)
        state["healthy"] = True
        await asyncio.sleep(0.2)
        assert len(rec.times) >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
