"""systemd's watchdog (``WatchdogSec=``): ``WATCHDOG=1`` sent from the event loop, held back when the loop is stuck.

A ping task on the loop cannot ping while the loop is blocked, but a loop that wakes only now and then would
still ping often enough to hide that it is wedged. So every tick measures how late it woke: a tick later than
``max_late_s`` (or an unhealthy ``healthy()``) sends nothing and logs why. Systemd restarts the service once
no ping came for ``WatchdogSec``. The timing decision is the pure function ``decide``; ``Watchdog`` only
sleeps and sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .clock import Clock, MonotonicClock

log = logging.getLogger(__name__)


class Pinger(Protocol):
    def watchdog(self) -> None: ...


@dataclass(frozen=True)
class WatchdogTiming:
    # systemd's WatchdogSec= (from $WATCHDOG_USEC): the longest gap it accepts between two pings.
    interval_s: float
    # Ticks per interval. A stall shorter than max_late delays one ping by at most period + max_late, inside
    # the interval; a longer one skips that tick, the next ping comes a period later, past the interval:
    # systemd restarts the service, as intended for a loop stuck that long.
    ticks_per_interval: int = 3
    # A tick that woke later than this share of the interval means the loop was stuck: no ping. With three
    # ticks per interval, a tolerated stall still gives a ping within period + max_late < interval.
    max_late_share: float = 0.5

    @property
    def period_s(self) -> float:
        return self.interval_s / self.ticks_per_interval

    @property
    def max_late_s(self) -> float:
        return self.interval_s * self.max_late_share


@dataclass(frozen=True)
class Tick:
    ping: bool
    late_s: float  # how long after its due time the tick ran
    next_due: float
    reason: str = ""  # why no ping; empty when pinging


def decide(timing: WatchdogTiming, due: float, now: float, healthy: bool = True) -> Tick:
    """One tick that was due at ``due`` and runs at ``now``. The next tick is one period after ``now``, not
    after ``due``: a stalled loop gets no burst of catch-up pings."""
    late = max(0.0, now - due)
    next_due = now + timing.period_s
    if late > timing.max_late_s:
        return Tick(False, late, next_due, f"event loop was stuck: tick {late:.3f}s late "
                                           f"(limit {timing.max_late_s:.3f}s)")
    if not healthy:
        return Tick(False, late, next_due, "health check failed")
    return Tick(True, late, next_due)


class Watchdog:
    """Pings ``notifier.watchdog()`` every ``timing.period_s`` until cancelled (the node owns its task)."""

    def __init__(self, notifier: Pinger, timing: WatchdogTiming, healthy: Callable[[], bool] | None = None,
                 clock: Clock | None = None) -> None:
        self.notifier = notifier
        self.timing = timing
        self.healthy = healthy
        self.clock = clock or MonotonicClock()
        self.sent = 0
        self.skipped = 0
        self._stalled = False  # the last tick skipped its ping

    def _is_healthy(self) -> bool:
        if self.healthy is None:
            return True
        try:
            return bool(self.healthy())
        except Exception:
            log.exception("watchdog health check raised; counting it as unhealthy")
            return False

    async def run(self) -> None:
        log.info("systemd watchdog: %.1fs, ping every %.2fs unless the loop stalls over %.2fs",
                 self.timing.interval_s, self.timing.period_s, self.timing.max_late_s)
        due = self.clock.now()  # the first ping goes out at once
        while True:
            delay = due - self.clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tick = decide(self.timing, due, self.clock.now(), self._is_healthy())
            if tick.ping:
                if self._stalled:
                    log.info("watchdog pings resumed")
                self.notifier.watchdog()
                self.sent += 1
            else:
                self.skipped += 1
                log.warning("watchdog ping skipped: %s", tick.reason)
            self._stalled = not tick.ping
            due = tick.next_due


async def run_watchdog(notifier: Pinger, interval_s: float, healthy: Callable[[], bool] | None = None) -> None:
    """The node's watchdog task: ``WatchdogTiming`` defaults for systemd's interval."""
    await Watchdog(notifier, WatchdogTiming(interval_s), healthy).run()
