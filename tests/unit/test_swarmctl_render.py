"""swarmctl's human status: every member with state, layers, device, load and last heard; coverage, ring."""

from __future__ import annotations

from swarmd.cli.swarmctl import render_status

DOC = {
    "node_id": "a", "state": "serving", "listen": "10.0.0.1:7070", "model": {"name": "m", "num_layers": 8},
    "layers": [0, 4], "device": "cpu",
    "spans": [{"layers": [0, 4], "state": "serving", "sessions": 1}, {"layers": [0, 3], "state": "draining",
                                                                      "sessions": 2}],
    "coverage": [{"layers": [0, 4], "replicas": 2}, {"layers": [4, 8], "replicas": 2}],
    "layer_replicas": {"min": 2, "per_layer": [2] * 8}, "ring": ["a", "c"],
    "placement": {"mode": "auto", "target": [0, 4], "complete": True, "replicated": True},
    "gossip": {"members": 4, "incarnation": 0},
    "peers": [
        {"node_id": "b", "addr": "10.0.0.2:7070", "state": "alive", "layers": [0, 4], "device": "cuda:0",
         "load": {"sessions": 3, "queue": 1}, "last_heard_s": 0.4, "rtt_ms": 0.31},
        {"node_id": "c", "addr": "10.0.0.3:7070", "state": "suspect", "layers": [4, 8], "device": "cpu",
         "load": None, "last_heard_s": None, "rtt_ms": None},
        {"node_id": None, "addr": "10.0.0.9:7070", "state": "rejected", "layers": None, "device": None,
         "error": "serves other (12 layers)"},
    ],
}


def test_render_lists_members_spans_coverage_and_ring() -> None:
    text = render_status(DOC)
    lines = text.splitlines()
    assert "draining (2 sessions)" in text and "every layer held 2+ times" in text
    assert "ring      a -> c" in lines
    row_b = next(line for line in lines if line.startswith("b "))
    assert all(x in row_b for x in ("alive", "cuda:0", "3s/1q", "0.4s ago", "0.31ms"))
    row_c = next(line for line in lines if line.startswith("c "))
    assert "suspect" in row_c
    assert any("rejected" in line and "serves other" in line for line in lines)
    assert "members   4 live" in text
