"""The probe cycle of one protocol period and the randomised round-robin target order. Pure.

A period: ``Ping`` the target; no ``Ack`` by ``probe_timeout`` -> ask helpers (``PingReq``) and ping
once more; still nothing when the period ends -> suspect. A node that finds itself more than a whole
interval behind a step (it was paused or starved) abandons the probe rather than blame the target
for answers it could not have received.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Step = Literal["wait", "indirect", "suspect", "abandon"]


@dataclass(slots=True)
class Probe:
    seq: int
    target: str
    sent_at: float
    indirect_at: float | None = None  # when helpers were asked

    def due(self, interval: float, timeout: float) -> float:
        """When the next step is due: the direct timeout, then the rest of the period after the helpers."""
        if self.indirect_at is None:
            return self.sent_at + timeout
        return self.indirect_at + interval - timeout

    def step(self, now: float, interval: float, timeout: float) -> Step:
        due = self.due(interval, timeout)
        if now < due:
            return "wait"
        if now > due + interval:
            return "abandon"
        if self.indirect_at is None:
            self.indirect_at = now
            return "indirect"
        return "suspect"


@dataclass(frozen=True, slots=True)
class Relay:
    """An indirect probe this node runs for a requester: forward the target's ack as ``Ack(seq)``."""

    requester_addr: str
    seq: int  # the requester's sequence number
    expires: float


class ProbeOrder:
    """Walk the members in a shuffled order; reshuffle at the end. A member that joins mid-walk is
    inserted at a random place in the rest of it, so it is probed within one round."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._idx = 0

    def next(self, probeable: Callable[[str], bool], everyone: Callable[[], list[str]]) -> str | None:
        for _ in range(2):
            while self._idx < len(self._order):
                node_id = self._order[self._idx]
                self._idx += 1
                if probeable(node_id):
                    return node_id
            self._order = everyone()
            self._rng.shuffle(self._order)
            self._idx = 0
        return None

    def insert(self, node_id: str) -> None:
        if self._order:
            self._order.insert(self._rng.randint(self._idx, len(self._order)), node_id)
