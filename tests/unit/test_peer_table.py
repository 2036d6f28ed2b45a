"""membership/table.py: PeerTable learns peers from Hello, marks them down, and revives them when seen again."""

from __future__ import annotations

import dataclasses
from typing import Any

from swarmd.clock import FakeClock
from swarmd.membership.table import PeerInfo, PeerTable
from swarmd.wire.messages import Hello


def hello(node_id: str = "b", span: tuple[int, int] = (0, 6), **changes: Any) -> Hello:
    base = Hello(node_id, f"{node_id}.local:7000", "swarmd/0.1", "tiny", 12, 64, span[0], span[1], "cpu")
    return dataclasses.replace(base, **changes)


def test_saw_adds_an_alive_peer() -> None:
    table = PeerTable("a")
    info = table.saw("10.0.0.2:7000", hello("b"), now=5.0)
    assert table.peers == {"b": info}
    assert (info.node_id, info.addr, info.state, info.since) == ("b", "10.0.0.2:7000", "alive", 5.0)
    assert info.hello == hello("b")
    assert table.alive() == [info]


def test_seeing_the_same_peer_again_keeps_the_record() -> None:
    clock = FakeClock(1.0)
    table = PeerTable("a")
    first = table.saw("10.0.0.2:7000", hello("b"), clock.now())
    clock.advance(10)
    again = table.saw("10.0.0.2:7000", hello("b"), clock.now())
    assert again is first
    assert again.since == 1.0  # "since" is when the current state began
    assert len(table.peers) == 1


def test_down_marks_dead_and_hides_from_alive() -> None:
    table = PeerTable("a")
    table.saw("x:1", hello("b"), 1.0)
    c = table.saw("x:2", hello("c"), 1.0)
    table.down("b", 3.0)
    assert table.peers["b"].state == "dead"
    assert table.peers["b"].since == 3.0
    assert table.alive() == [c]
    assert "b" in table.peers  # dead peers stay known


def test_down_twice_keeps_the_first_time() -> None:
    table = PeerTable("a")
    table.saw("x:1", hello("b"), 1.0)
    table.down("b", 3.0)
    table.down("b", 9.0)
    assert (table.peers["b"].state, table.peers["b"].since) == ("dead", 3.0)


def test_down_of_an_unknown_node_is_a_no_op() -> None:
    table = PeerTable("a")
    table.down("ghost", 1.0)
    assert table.peers == {}
    assert table.alive() == []


def test_seeing_a_dead_node_revives_it() -> None:
    table = PeerTable("a")
    table.saw("x:1", hello("b"), 1.0)
    table.down("b", 2.0)
    info = table.saw("x:1", hello("b"), 7.0)
    assert (info.state, info.since) == ("alive", 7.0)
    assert table.peers["b"] is info
    assert table.alive() == [info]


def test_changed_addr_replaces_the_record() -> None:
    table = PeerTable("a")
    old = table.saw("10.0.0.2:7000", hello("b"), 1.0)
    new = table.saw("10.0.0.9:7000", hello("b"), 4.0)
    assert new is not old
    assert (new.addr, new.since) == ("10.0.0.9:7000", 4.0)
    assert table.peers["b"] is new
    assert table.alive() == [new]


def test_changed_hello_replaces_the_record() -> None:
    table = PeerTable("a")
    old = table.saw("x:1", hello("b", span=(0, 6)), 1.0)
    new = table.saw("x:1", hello("b", span=(6, 12)), 2.0)
    assert new is not old and table.peers["b"] is new
    assert new.span == (6, 12) and new.since == 2.0
    newer = table.saw("x:1", hello("b", span=(6, 12), software="swarmd/0.2"), 3.0)
    assert newer is not new and newer.hello.software == "swarmd/0.2"
    assert len(table.alive()) == 1


def test_span() -> None:
    assert PeerInfo("b", "x:1", hello("b", span=(3, 9))).span == (3, 9)
    assert PeerInfo("b", "x:1", hello("b", span=(-1, -1))).span is None


def test_alive_lists_every_live_peer() -> None:
    table = PeerTable("a")
    for i, node in enumerate("bcde"):
        table.saw(f"x:{i}", hello(node), float(i))
    table.down("c", 10.0)
    table.down("e", 10.0)
    assert sorted(p.node_id for p in table.alive()) == ["b", "d"]
    table.saw("x:2", hello("c"), 11.0)
    assert sorted(p.node_id for p in table.alive()) == ["b", "c", "d"]
