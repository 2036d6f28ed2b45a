"""A bounded, transmit-limited queue of piggy-backed updates (memberlist's TransmitLimitedQueue).

Each update is keyed (by member id): a newer update for the same key replaces the older one. Every
call to ``take`` fills one message with the least-sent updates first (newest first among equals),
counts one transmission for each, and drops an update once it has been sent ``limit`` times. The
queue holds at most ``max_items``; past that the most-sent (then oldest) updates are dropped and
counted in ``dropped``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Item(Generic[T]):
    key: str
    value: T
    size: int
    order: int  # insertion counter: larger is newer
    transmits: int = 0


class BroadcastQueue(Generic[T]):
    def __init__(self, max_items: int, size_of: Callable[[T], int]) -> None:
        if max_items < 1:
            raise ValueError("a broadcast queue needs room for at least one item")
        self.max_items = max_items
        self._size_of = size_of
        self._items: dict[str, _Item[T]] = {}
        self._counter = 0
        self.dropped = 0  # updates evicted before reaching their transmit limit

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        return None if item is None else item.value

    def transmits(self, key: str) -> int | None:
        item = self._items.get(key)
        return None if item is None else item.transmits

    def put(self, key: str, value: T) -> None:
        """Queue ``value``, replacing (and restarting the transmit count of) any update for ``key``."""
        self._counter += 1
        self._items.pop(key, None)
        self._items[key] = _Item(key, value, self._size_of(value), self._counter)
        if len(self._items) > self.max_items:
            self._evict(len(self._items) - self.max_items)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def take(self, limit: int, max_entries: int, max_bytes: int) -> list[T]:
        """Up to ``max_entries`` updates totalling at most ``max_bytes``, each counted as sent once.

        An update larger than the whole budget is skipped (it can never fit); one that does not fit the
        space left stays queued for a later message.
        """
        if max_entries <= 0 or not self._items:
            return []
        out: list[T] = []
        used = 0
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -i.order)):
            if len(out) >= max_entries:
                break
            if used + item.size > max_bytes:
                continue
            used += item.size
            out.append(item.value)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
        return out

    def _evict(self, count: int) -> None:
        victims = sorted(self._items.values(), key=lambda i: (-i.transmits, i.order))[:count]
        for item in victims:
            del self._items[item.key]
        self.dropped += len(victims)
        log.debug("broadcast queue full (%d items): dropped %d most-sent updates", self.max_items, len(victims))
