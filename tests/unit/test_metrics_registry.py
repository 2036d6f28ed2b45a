"""The Prometheus registry renders what the reference parser reads back, and bounds its label sets."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmd.metrics import MAX_LABEL_SETS, Registry
from swarmd.node_metrics import NodeMetrics


def parse(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))] = s.value
    return out


def test_counter_gauge_histogram_round_trip() -> None:
    r = Registry()
    c = r.counter("swarmd:things", "Things.\nWith a newline", ("kind",))
    g = r.gauge("swarmd:level", "Level.")
    h = r.histogram("swarmd:wait_seconds", "Wait.", (0.1, 1.0))
    c.inc(2, kind='a"b\\c')
    c.inc(kind="x")
    g.set(-1.5)
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    text = r.render()
    # Text format 0.0.4: a TYPE line names its samples exactly (a counter's are <name>_total).
    assert "# TYPE swarmd:things_total counter" in text and "# TYPE swarmd:wait_seconds histogram" in text
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types == {"swarmd:things": "counter", "swarmd:level": "gauge", "swarmd:wait_seconds": "histogram"}
    got = parse(text)
    assert got['swarmd:things_total|kind=a"b\\c'] == 2 and got["swarmd:things_total|kind=x"] == 1
    assert got["swarmd:level"] == -1.5
    assert got["swarmd:wait_seconds_bucket|le=0.1"] == 2  # le is inclusive
    assert got["swarmd:wait_seconds_bucket|le=1.0"] == 3
    assert got["swarmd:wait_seconds_bucket|le=+Inf"] == 4
    assert got["swarmd:wait_seconds_count"] == 4 and got["swarmd:wait_seconds_sum"] == pytest.approx(7.65)
    with pytest.raises(ValueError):
        c.inc(-1, kind="x")
    with pytest.raises(ValueError):
        c.inc(1, other="x")


def test_label_sets_are_bounded() -> None:
    r = Registry()
    c = r.counter("swarmd:per_peer", "Per peer.", ("peer",))
    for i in range(MAX_LABEL_SETS + 50):
        c.inc(peer=f"p{i}")
    assert len(c.values) == MAX_LABEL_SETS
    c.inc(peer="p0")  # existing sets still count
    assert c.get(peer="p0") == 2


def test_request_track_waiting_running_and_end_once() -> None:
    m = NodeMetrics()
    t = m.request()
    assert m.waiting.get() == 1
    t.running(5)
    assert (m.waiting.get(), m.running.get(), m.prompt_tokens.get()) == (0, 1, 5)
    for _ in range(4):
        t.token()
    t.end("length")
    t.end(None, "aborted")  # a second end changes nothing
    assert m.running.get() == 0 and m.successes.get(finished_reason="length") == 1
    assert m.failures.values == {}
    assert (m.ttft.count(), m.itl.count(), m.e2e.count(), m.generation_tokens.get()) == (1, 3, 1, 4)
    failed = m.request()
    failed.end(None, "no_chain")
    assert m.waiting.get() == 0 and m.failures.get(code="no_chain") == 1 and m.e2e.count() == 1
