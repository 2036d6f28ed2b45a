"""Byte accounting for KV caches. Pure asyncio (no torch): reservations wait or fail cleanly."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..errors import KVBudgetExceeded


@dataclass(eq=False)
class Reservation:
    nbytes: int
    released: bool = False


class KVBudget:
    """A fixed pool of bytes. ``reserve`` waits up to ``timeout`` for room, then raises 503-class error."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self.sessions = 0
        self._freed = asyncio.Condition()

    async def reserve(self, nbytes: int, timeout: float = 0.0) -> Reservation:
        if nbytes > self.capacity:
            raise KVBudgetExceeded(
                f"session needs {nbytes} bytes of KV cache, more than the whole budget of {self.capacity}"
            )
        async with self._freed:
            if self.used + nbytes > self.capacity:
                try:
                    await asyncio.wait_for(
                        self._freed.wait_for(lambda: self.used + nbytes <= self.capacity), timeout
                    )
                except TimeoutError:
                    raise KVBudgetExceeded(
                        f"KV cache budget full ({self.used}/{self.capacity} bytes in {self.sessions} sessions)"
                    ) from None
            self.used += nbytes
            self.sessions += 1
        return Reservation(nbytes)

    async def release(self, res: Reservation) -> None:
        if res.released:
            return
        res.released = True
        async with self._freed:
            self.used -= res.nbytes
            self.sessions -= 1
            self._freed.notify_all()
