"""membership/service.py: the asyncio driver of Swim, over an in-memory network with real (local preset) timings.

Each ``Membership`` posts through ``Net``: a message for an address is handed to the owner's ``receive`` on a
later loop iteration (``call_soon``), with the posting node's id as the authenticated sender.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest

from swarmd.membership.service import Membership
from swarmd.membership.swim import Swim
from swarmd.membership.swim_config import SwimConfig
from swarmd.membership.swim_messages import ALIVE, DEAD, LEFT, SUSPECT, Gossip, MemberUpdate
from swarmd.membership.swim_types import MemberChanged
from swarmd.wire.messages import Message
from swarmd.wire.messages import Ping as LinkPing

LOCAL = SwimConfig.local()


def addr(node_id: str) -> str:
    return f"{node_id}.mem:7946"


class Net:
    """Drivers keyed by address; ``down`` nodes neither send nor receive."""

    def __init__(self) -> None:
        self.nodes: dict[str, Membership] = {}
        self.down: set[str] = set()
        self.changes: dict[str, list[MemberChanged]] = {}

    def add(self, node_id: str, seed: int = 0) -> Membership:
        swim = Swim(node_id, addr(node_id), LOCAL, random.Random(f"{seed}/{node_id}"))
        self.changes[node_id] = []
        m = Membership(swim, self._post_from(node_id), self.changes[node_id].append)
        self.nodes[addr(node_id)] = m
        return m

    def _post_from(self, sender: str) -> Callable[[str, Message], object]:
        def post(to: str, msg: Message) -> None:
            dst = self.nodes.get(to)
            if sender in self.down or dst is None or dst.swim.self_id in self.down:
                return
            asyncio.get_running_loop().call_soon(self._deliver, dst, msg, sender)

        return post

    def _deliver(self, dst: Membership, msg: Message, sender: str) -> None:
        if sender not in self.down and dst.swim.self_id not in self.down:
            dst.receive(msg, sender=sender)

    def __getitem__(self, node_id: str) -> Membership:
        return self.nodes[addr(node_id)]

    def start(self, *ids: str) -> None:
        first = ids[0]
        self[first].start()
        for node_id in ids[1:]:
            self[node_id].start(seeds=[addr(first)])

    def state(self, observer: str, node_id: str) -> str | None:
        m = self[observer].swim.member(node_id)
        return None if m is None else m.state

    def seen(self, observer: str, node_id: str) -> list[str]:
        return [ch.member.state for ch in self.changes[observer] if ch.member.node_id == node_id]

    async def close(self) -> None:
        for m in self.nodes.values():
            await m.stop(leave=False)


@pytest.fixture()
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        await n.close()


async def until(cond: Callable[[], bool], timeout: float) -> float:
    """Wait until ``cond()`` holds (polled every 10 ms); returns the seconds it took."""
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            if cond():
                return time.monotonic() - t0
            await asyncio.sleep(0.01)


def all_alive(net: Net, *ids: str) -> bool:
    return all(net.state(a, b) == ALIVE for a in ids for b in ids if a != b)


async def test_two_drivers_converge(net: Net) -> None:
    net.add("a"), net.add("b")
    net.start("a", "b")
    await until(lambda: all_alive(net, "a", "b"), 2.0)
    assert net.seen("a", "b")[0] == ALIVE and net.seen("b", "a")[0] == ALIVE
    assert net["b"].sent["PushPull"] >= 1  # the join exchange with the seed


async def test_three_drivers_converge_through_one_seed(net: Net) -> None:
    for node_id in "abc":
        net.add(node_id)
    net.start("a", "b", "c")
    await until(lambda: all_alive(net, "a", "b", "c"), 2.0)
    assert net["b"].swim.num_live == net["c"].swim.num_live == 3


async def test_probes_give_round_trip_times_and_last_heard(net: Net) -> None:
    net.add("a"), net.add("b")
    net.start("a", "b")
    await until(lambda: all_alive(net, "a", "b"), 2.0)
    await until(lambda: "b" in net["a"].rtt_s and "a" in net["b"].rtt_s, 2.0)
    for rtt in (net["a"].rtt_s["b"], net["b"].rtt_s["a"]):
        assert 0.0 <= rtt < LOCAL.probe_timeout  # in-memory delivery: well under the probe timeout
    heard = net["a"].last_heard["b"]
    assert time.monotonic() - heard < 1.0
    await asyncio.sleep(3 * LOCAL.probe_interval)
    assert net["a"].last_heard["b"] > heard  # keeps moving while b answers
    assert net["a"].sent["SwimPing"] >= 1


async def test_message_from_someone_else_than_its_sender_is_dropped(net: Net) -> None:
    a = net.add("a")
    claim = MemberUpdate("mallory", addr("mallory"), 0, ALIVE, 0, b"", "mallory")
    a.receive(Gossip("mallory", (claim,)), sender="b")
    assert a.rejected["sender_mismatch"] == 1
    assert a.swim.member("mallory") is None
    assert "mallory" not in a.last_heard and "b" not in a.last_heard
    a.receive(Gossip("mallory", (claim,)), sender="mallory")  # the same, on mallory's own connection
    assert a.rejected["sender_mismatch"] == 1
    m = a.swim.member("mallory")
    assert m is not None and m.state == ALIVE
    assert [ch.member.node_id for ch in net.changes["a"]] == ["mallory"]


async def test_non_swim_message_is_ignored(net: Net) -> None:
    a = net.add("a")
    a.receive(LinkPing(1), sender="b")
    assert not a.rejected and not a.last_heard


async def test_leave_is_seen_as_left(net: Net) -> None:
    for node_id in "abc":
        net.add(node_id)
    net.start("a", "b", "c")
    await until(lambda: all_alive(net, "a", "b", "c"), 2.0)
    await net["b"].stop(leave=True)
    net.down.add("b")
    await until(lambda: net.state("a", "b") == LEFT and net.state("c", "b") == LEFT, 2.0)
    for observer in "ac":
        assert net.seen(observer, "b")[-1] == LEFT
        assert DEAD not in net.seen(observer, "b")
    assert net.state("a", "c") == ALIVE and net.state("c", "a") == ALIVE


async def test_silent_member_is_suspected_then_declared_dead(net: Net) -> None:
    for node_id in "abc":
        net.add(node_id)
    net.start("a", "b", "c")
    await until(lambda: all_alive(net, "a", "b", "c"), 2.0)
    await net["b"].stop(leave=False)
    net.down.add("b")
    took = await until(lambda: net.state("a", "b") == DEAD and net.state("c", "b") == DEAD, 10.0)
    for observer in "ac":
        states = net.seen(observer, "b")
        assert SUSPECT in states and DEAD in states
        assert states.index(SUSPECT) < states.index(DEAD)
    assert took >= LOCAL.probe_interval  # not at once: a probe must fail first
    assert net.state("a", "c") == ALIVE and net.state("c", "a") == ALIVE


async def test_stopped_driver_no_longer_probes(net: Net) -> None:
    a = net.add("a")
    net.add("b")
    net.start("a", "b")
    await until(lambda: all_alive(net, "a", "b"), 2.0)
    pings = a.sent["SwimPing"]
    await asyncio.sleep(3 * LOCAL.probe_interval)
    assert a.sent["SwimPing"] > pings  # the driver probes while it runs
    await a.stop(leave=False)
    assert not a.swim.left and net.state("b", "a") == ALIVE  # no leave announced
    net.down.add("a")  # nothing reaches it any more: only its own timer could make it send
    sent = sum(a.sent.values())
    await asyncio.sleep(3 * LOCAL.probe_interval)
    assert sum(a.sent.values()) == sent


async def test_leave_is_announced_once(net: Net) -> None:
    a = net.add("a")
    net.add("b")
    net.start("a", "b")
    await until(lambda: all_alive(net, "a", "b"), 2.0)
    before = a.sent["Gossip"]
    await a.stop(leave=True, linger_s=0.05)
    await a.stop(leave=True, linger_s=0.05)
    assert a.swim.left and a.sent["Gossip"] - before == 1  # one peer told at once, and only once
    assert net.state("b", "a") == LEFT
