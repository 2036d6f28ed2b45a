"""Suspicion and retransmission timing: pure functions plus one small timer object (memberlist's suspicion.go).

A suspected member is declared dead when its suspicion timer runs out. The timer starts long
(``hi``) and shortens towards ``lo`` as other members independently confirm the suspicion, so a
real failure is declared quickly while one node's bad link cannot kill a healthy member on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def node_scale(n: int) -> float:
    """``max(1, log10(max(1, n)))``: grows with the cluster, never below one probe-interval multiple."""
    return max(1.0, math.log10(max(1, n)))


def suspicion_timeout(suspicion_mult: float, n: int, probe_interval: float) -> float:
    """The shortest suspicion timeout for ``n`` members: ``mult * max(1, log10(n)) * interval``.

    The ``max(1, ·)`` floor (memberlist's) keeps small clusters from getting a zero timeout (log10(1) = 0).
    """
    return suspicion_mult * node_scale(n) * probe_interval


def suspicion_bounds(
    suspicion_mult: float, max_timeout_mult: float, n: int, probe_interval: float, floor_s: float = 0.0
) -> tuple[float, float]:
    """``(lo, hi)``: the timeout with every expected confirmation (never below ``floor_s``), and with none
    (``max_timeout_mult`` times the unfloored one, never below ``lo``)."""
    raw = suspicion_timeout(suspicion_mult, n, probe_interval)
    lo = max(raw, floor_s)
    return lo, max(lo, max_timeout_mult * raw)


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """How many independent confirmations take the timeout down to ``lo``: ``mult - 2``, or 0 when
    fewer than that many other members could confirm (memberlist: ``n - 2 < k`` gives 0)."""
    k = max(0, suspicion_mult - 2)
    return 0 if n - 2 < k else k


def confirmed_timeout(lo: float, hi: float, k: int, c: int) -> float:
    """``max(lo, hi - (hi - lo) * log(c + 1) / log(k + 1))`` after ``c`` of ``k`` expected confirmations."""
    if k < 1:
        return lo
    frac = math.log(min(c, k) + 1) / math.log(k + 1)
    return max(lo, hi - (hi - lo) * frac)


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each node sends one gossip update: ``mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(max(0, n) + 1))


def push_pull_scale(interval: float, n: int, threshold: int = 8) -> float:
    """Beyond ``threshold`` members, stretch the anti-entropy interval in proportion to ``n``: a full-state
    exchange costs O(n) bytes, so this keeps its bytes per node per second constant (memberlist stretches
    only logarithmically, which leaves push-pull traffic growing linearly). Gossip, not anti-entropy,
    spreads news; anti-entropy repairs what gossip missed, and still runs every ``interval * n / 8``."""
    if n <= threshold:
        return interval
    return interval * n / threshold


@dataclass
class Suspicion:
    """The timer of one suspected member. ``accuser`` started it and does not count as a confirmation."""

    start: float
    lo: float
    hi: float
    k: int  # expected confirmations
    accuser: str
    confirmers: set[str] = field(default_factory=set)

    def confirm(self, by: str) -> bool:
        """Count an independent confirmation; True only for a new one that shortens the timer."""
        if len(self.confirmers) >= self.k or by == self.accuser or by in self.confirmers:
            return False
        self.confirmers.add(by)
        return True

    @property
    def timeout(self) -> float:
        return confirmed_timeout(self.lo, self.hi, self.k, len(self.confirmers))

    @property
    def deadline(self) -> float:
        return self.start + self.timeout
