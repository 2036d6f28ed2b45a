"""A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
exposition format (version 0.0.4). No dependency; every family bounds its label sets.

Values that other components already count (rejected connections, gossip drops, members by state) are
not copied here on every event: a *collector* reads them at scrape time and sets them on the family.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

MAX_LABEL_SETS = 256  # per family; a label set beyond it is dropped (logged once)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Family:
    """One metric family; ``kind`` is counter, gauge or histogram."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._overflowed = False

    def _key(self, labels: dict[str, str]) -> LabelKey | None:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labels)
        if key not in self._series() and len(self._series()) >= MAX_LABEL_SETS:
            if not self._overflowed:
                self._overflowed = True
                log.warning("metric %s has %d label sets; dropping new ones", self.name, MAX_LABEL_SETS)
            return None
        return key

    def _series(self) -> dict[LabelKey, object]:
        raise NotImplementedError

    def _labelstr(self, key: LabelKey, extra: str = "") -> str:
        parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    @property
    def exposed(self) -> str:
        """The name on the HELP and TYPE lines: every sample of the family is this name (plus a histogram's
        ``_bucket``/``_sum``/``_count``)."""
        return self.name

    def render(self) -> str:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        head = [f"# HELP {self.exposed} {help_text}", f"# TYPE {self.exposed} {self.kind}"]
        return "\n".join([*head, *self.samples()])


class Counter(Family):
    """Only goes up. Samples are ``<name>_total``."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelKey, float] = {}

    def _series(self) -> dict[LabelKey, object]:
        return self.values  # type: ignore[return-value]

    @property
    def exposed(self) -> str:
        return self.name + "_total"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        if key is not None:
            self.values[key] = self.values.get(key, 0.0) + amount

    def set_total(self, total: float, **labels: str) -> None:
        """For collectors that read a count kept elsewhere; never lowers the value."""
        key = self._key(labels)
        if key is not None:
            self.values[key] = max(self.values.get(key, 0.0), total)

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(str(labels[n]) for n in self.labels), 0.0)

    def samples(self) -> Iterable[str]:
        if not self.values and not self.labels:
            yield f"{self.name}_total 0"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}_total{self._labelstr(key)} {_number(value)}"


class Gauge(Family):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelKey, float] = {}

    def _series(self) -> dict[LabelKey, object]:
        return self.values  # type: ignore[return-value]

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        if key is not None:
            self.values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        if key is not None:
            self.values[key] = self.values.get(key, 0.0) + amount

    def clear(self) -> None:
        self.values.clear()

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(str(labels[n]) for n in self.labels), 0.0)

    def samples(self) -> Iterable[str]:
        if not self.values and not self.labels:
            yield f"{self.name} 0"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{self._labelstr(key)} {_number(value)}"


class Histogram(Family):
    """Cumulative buckets (``le``), ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError("buckets must be sorted and non-empty")
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[LabelKey, tuple[list[int], list[float]]] = {}  # key -> (counts per bucket + inf, [sum])

    def _series(self) -> dict[LabelKey, object]:
        return self.series  # type: ignore[return-value]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        if key is None or math.isnan(value):
            return
        counts, total = self.series.setdefault(key, ([0] * (len(self.bounds) + 1), [0.0]))
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def retain(self, keep: Callable[[LabelKey], bool]) -> None:
        """Forget the label sets ``keep`` rejects (e.g. peers that left the swarm)."""
        for key in [k for k in self.series if not keep(k)]:
            del self.series[key]

    def count(self, **labels: str) -> int:
        got = self.series.get(tuple(str(labels[n]) for n in self.labels))
        return sum(got[0]) if got else 0

    def samples(self) -> Iterable[str]:
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                le = 'le="' + ("+Inf" if math.isinf(bound) else repr(bound)) + '"'
                yield f"{self.name}_bucket{self._labelstr(key, le)} {running}"
            yield f"{self.name}_sum{self._labelstr(key)} {_number(total[0])}"
            yield f"{self.name}_count{self._labelstr(key)} {running}"


class Registry:
    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, family: Family) -> Family:
        taken = {n for f in self.families.values() for n in (f.name, f.exposed)}
        if family.name in taken or family.exposed in taken:
            raise ValueError(f"metric {family.name} clashes with one registered before")
        self.families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        return self._add(Histogram(name, help, buckets, labels))  # type: ignore[return-value]

    def collector(self, fn: Callable[[], None]) -> None:
        """``fn`` runs before each render and sets values read from elsewhere."""
        self._collectors.append(fn)

    def render(self) -> str:
        for fn in self._collectors:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a broken collector must not break the scrape
                log.exception("metrics collector failed")
        return "\n".join(f.render() for f in self.families.values()) + "\n"
