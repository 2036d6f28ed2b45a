"""membership/swim.py over time: probes, indirect probes, suspicion, refutation, leave, push-pull, join.

A few nodes on a fake clock (``swim_harness.Mini``, zero latency) with the ``local`` preset: probe
every 0.1 s, probe timeout 0.04 s, suspicion_mult 3, push-pull every 1 s.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from swim_harness import Mini, addr, claim, introduce

from swarmd.membership.swim import Send, Swim, SwimConfig
from swarmd.membership.swim_messages import ALIVE, DEAD, LEFT, SUSPECT, Ack, Gossip, Ping, PingReq, PushPull

LOCAL = SwimConfig.local()


def test_lan_floor_keeps_a_fully_confirmed_suspicion_alive_for_its_floor() -> None:
    # LAN preset, n = 6, fully confirmed: lo would be 3 * 1 * 0.5 = 1.5 s; the 3 s floor keeps the member suspect.
    node = Swim("a", addr("a"), SwimConfig.lan(), random.Random(1))
    introduce(node, "b", "c", "d", "e", "f")
    for who in ("c", "d", "e"):
        node.receive(Gossip(who, (claim("b", SUSPECT, by=who),)), 0.0)
    node.tick(2.99)
    assert node.member("b").state == SUSPECT  # type: ignore[union-attr]
    node.tick(3.01)
    assert node.member("b").state == DEAD  # type: ignore[union-attr]


def test_probes_are_acked_and_nobody_is_suspected() -> None:
    c = Mini("a", "b")
    c.join_all()
    assert c.state("a", "b") == c.state("b", "a") == ALIVE
    c.run(2.0)
    pings = c.messages(Ping, src="a", to="b")
    acked = {m.seq for m in c.messages(Ack, src="b", to="a")}
    assert 20 <= len(pings) <= 26  # one probe per 0.1 s over 2.5 s
    assert {p.seq for p in pings} <= acked
    assert not c.messages(PingReq)
    assert all(ch.member.state == ALIVE for _, _, ch in c.changes)


def test_indirect_probe_through_a_helper_keeps_a_member_alive() -> None:
    c = Mini("a", "b", "c")
    c.join_all()
    c.block("a", "c")  # a and c cannot hear each other; both hear b
    t0 = c.now
    c.run(3.0)
    reqs = c.messages(PingReq, src="a", to="b")
    assert reqs and {r.target for r in reqs} == {"c"}
    relayed = {m.seq for m in c.messages(Ack, src="b", to="a")}
    assert {r.seq for r in reqs} <= relayed  # b pinged c and forwarded c's ack under a's seq
    assert c.seen("a", "c", t0) == [] and c.seen("c", "a", t0) == []  # never suspected
    assert c.state("a", "c") == ALIVE


def test_silent_member_is_suspected_then_declared_dead() -> None:
    c = Mini("a", "b")
    c.join_all()
    t0 = c.now
    c.down.add("b")
    c.run(2.0)
    (ts, s1), (td, s2) = c.seen("a", "b", t0)
    assert (s1, s2) == (SUSPECT, DEAD)
    assert ts - t0 <= 2 * LOCAL.probe_interval + 0.01  # the next probe's period ends without an ack
    # n = 2: no confirmations expected, so the short timeout: 3 * max(1, log10 2) * 0.1 s.
    assert td - ts == pytest.approx(0.3, abs=0.006)


def test_suspected_member_refutes_with_a_higher_incarnation() -> None:
    c = Mini("a", "b", "c")
    c.join_all()
    c.deliver("a", Gossip("c", (claim("b", SUSPECT, 0, by="c"),)))
    assert c.state("a", "b") == SUSPECT
    c.run(0.25)  # under the suspicion timeout; a's next ping to b carries the suspicion
    assert c["b"].incarnation == 1
    for observer in ("a", "c"):
        m = c[observer].member("b")
        assert m is not None and (m.state, m.incarnation) == (ALIVE, 1)
    assert all(state != DEAD for _, state in c.seen("a", "b"))


@pytest.mark.parametrize(("confirmers", "dead_at_lo"), [((), False), (("d",), False), (("d", "e"), True)])
def test_independent_confirmations_shorten_the_suspicion(confirmers: tuple[str, ...], dead_at_lo: bool) -> None:
    # LAN timings with suspicion_mult 4 and no floor, n = 6: k = 4 - 2 = 2, lo = 4 * 1 * 0.5 = 2 s, hi = 6 * lo = 12 s.
    cfg = dataclasses.replace(SwimConfig.lan(), suspicion_mult=4, suspicion_min_s=0.0)
    node = Swim("a", addr("a"), cfg, random.Random(1))
    introduce(node, "b", "c", "d", "e", "f")
    node.receive(Gossip("c", (claim("b", SUSPECT, by="c"),)), 0.0)
    for who in confirmers:
        node.receive(Gossip(who, (claim("b", SUSPECT, by=who),)), 0.0)
    node.receive(Gossip("f", (claim("b", SUSPECT, by="c"),)), 0.0)  # the accuser again: no confirmation
    node.tick(2.001)
    assert node.member("b").state == (DEAD if dead_at_lo else SUSPECT)  # type: ignore[union-attr]
    if not dead_at_lo:
        want = 12.0 if not confirmers else 12.0 - 10.0 * 0.6309  # hi - (hi - lo) * log 2 / log 3
        node.tick(want - 0.01)
        assert node.member("b").state == SUSPECT  # type: ignore[union-attr]
        node.tick(want + 0.01)
        assert node.member("b").state == DEAD  # type: ignore[union-attr]


def test_leave_is_announced_and_the_leaver_stops_probing() -> None:
    c = Mini("a", "b", "c")
    c.join_all()
    c.handle("b", c["b"].leave(c.now))
    assert c.state("a", "b") == c.state("c", "b") == LEFT
    assert c["b"].leave(c.now) == []  # safe to call twice
    pings, pushes = len(c.messages(Ping, src="b")), len(c.messages(PushPull, src="b"))
    c.run(1.0)
    assert (len(c.messages(Ping, src="b")), len(c.messages(PushPull, src="b"))) == (pings, pushes)
    assert all(state != DEAD for _, state in c.seen("a", "b"))  # across the whole run
    c.deliver("b", Ping(7, "a", addr("a"), "b", ()))  # a leaver still answers until it is gone
    last = c.messages(Ack, src="b", to="a")[-1]
    assert isinstance(last, Ack) and last.seq == 7


def test_tombstones_are_removed_after_tombstone_s() -> None:
    c = Mini("a", "b")
    c.join_all()
    c.handle("b", c["b"].leave(c.now))
    c.down.add("b")
    c.run(LOCAL.tombstone_s - 0.1, dt=0.02)
    assert c.state("a", "b") == LEFT
    c.run(0.2, dt=0.02)
    assert c["a"].member("b") is None
    assert [ch.removed for t, o, ch in c.changes if o == "a" and ch.member.node_id == "b"][-1] is True


def test_push_pull_merges_two_groups() -> None:
    c = Mini("a", "b", "c", "d")
    introduce(c["a"], "b")
    introduce(c["b"], "a")
    introduce(c["c"], "d")
    introduce(c["d"], "c")
    c.handle("a", c["a"].join([addr("c")], c.now))  # one exchange: a and c learn everything
    assert {m.node_id for m in c["a"].members()} == {m.node_id for m in c["c"].members()} == set("abcd")
    c.run(1.0)  # gossip carries the rest to b and d
    assert all(c.state(x, y) == ALIVE for x in "abcd" for y in "abcd")


def test_push_pull_runs_every_interval() -> None:
    c = Mini("a", "b")
    c.join_all(settle=0.0)
    c.run(3.0)
    periodic = [m for m in c.messages(PushPull, src="a") if m.reply and not m.join]
    assert 3 <= len(periodic) <= 4


def test_dead_in_a_push_pull_only_makes_a_suspect() -> None:
    node = Swim("a", addr("a"), LOCAL, random.Random(1))
    introduce(node, "b", "c")
    node.receive(PushPull("c", addr("c"), False, False, (claim("b", DEAD, by="c"),)), 0.0)
    assert node.member("b").state == SUSPECT  # type: ignore[union-attr]


def test_join_is_retried_until_a_seed_answers() -> None:
    c = Mini("a", "b")
    c.down.add("a")
    c.handle("b", c["b"].join([addr("a")], c.now))
    c.run(0.5)
    tries = len(c.messages(PushPull, src="b", to="a"))
    assert tries == 3  # at 0, 0.2 and 0.4 s (join_retry_interval)
    c.down.discard("a")
    c.run(0.5)
    assert c.state("b", "a") == ALIVE and c.state("a", "b") == ALIVE
    joins = [m for m in c.messages(PushPull, src="b", to="a") if m.join]
    assert len(joins) <= tries + 1  # retries stop once someone is known


def test_restarted_node_outbids_its_own_tombstone() -> None:
    c = Mini("a", "b")
    c.join_all()
    c.down.add("b")
    c.run(1.0)
    assert c.state("a", "b") == DEAD
    fresh = c.restart("b")
    c.handle("b", fresh.join([addr("a")], c.now))  # a's state says b is dead at incarnation 0
    c.run(0.5)
    assert fresh.incarnation == 1
    assert c.state("a", "b") == ALIVE and c.state("b", "a") == ALIVE


def test_next_deadline_is_always_after_a_tick() -> None:
    c = Mini("a", "b", "c", seed=3)
    c.join_all()
    c.block("a", "c")
    c.down.add("b")
    for _ in range(400):
        c.run(0.005)
        for node_id in ("a", "c"):
            assert c[node_id].next_deadline() > c.now


def test_a_ping_to_a_suspect_always_carries_the_suspicion() -> None:
    a = Swim("a", addr("a"), LOCAL, random.Random(5))
    introduce(a, "b", "c")
    a.receive(Gossip("c", (claim("b", SUSPECT, by="c"),)), 0.0)
    for seq in range(20):  # our acks use up the suspicion's retransmissions
        a.receive(Ping(seq, "c", addr("c"), "a", ()), 0.0)
    pings: list[Ping] = []
    t = 0.0
    while not pings and t < 1.0:
        t += 0.01
        pings = [e.msg for e in a.tick(t)
                 if isinstance(e, Send) and isinstance(e.msg, Ping) and e.to_addr == addr("b")]
    assert pings and claim("b", SUSPECT, by="c") in pings[0].piggyback


def test_a_stalled_prober_blames_nobody() -> None:
    a = Swim("a", addr("a"), LOCAL, random.Random(5))
    introduce(a, "b")
    t, sent = 0.0, False
    while not sent:
        t += 0.01
        sent = any(isinstance(e, Send) and isinstance(e.msg, Ping) for e in a.tick(t))
    a.tick(t + 1.0)  # woke a whole second later: the ack may have come and gone unread
    assert a.member("b").state == ALIVE  # type: ignore[union-attr]
    assert a.dropped["stalled_probe"] == 1


def test_gossip_timer_pushes_pending_updates_and_is_silent_otherwise() -> None:
    c = Mini("a", "b", "c", "d")
    c.join_all(settle=3.0)  # every join broadcast has been sent its retransmit limit by now
    before = len(c.messages(Gossip, src="a"))
    c.run(1.0)
    assert len(c.messages(Gossip, src="a")) == before  # nothing new: no gossip traffic
    c["a"].set_meta(b"new", c.now)
    c.run(LOCAL.gossip_interval * 1.5)  # one gossip period, well under a probe period
    pushed = c.messages(Gossip, src="a")[before:]
    assert pushed and len({id(m) for m in pushed}) <= LOCAL.gossip_nodes * 2
    assert all(any(u.node_id == "a" and u.meta == b"new" for u in m.piggyback) for m in pushed)
    assert all(c[x].member("a").meta == b"new" for x in ("b", "c", "d"))  # type: ignore[union-attr]


@pytest.mark.parametrize("cut_s", [2.0, LOCAL.tombstone_s + 2.0])  # tombstones still there / already reaped
def test_two_sides_of_a_healed_partition_merge_into_one_view(cut_s: float) -> None:
    c = Mini("a", "b", "c", "d")
    c.join_all()
    for x in "ab":
        for y in "cd":
            c.block(x, y)
    c.run(cut_s, dt=0.02)
    assert c.state("a", "c") in (DEAD, None) and c.state("d", "b") in (DEAD, None)
    assert c.state("a", "b") == c.state("c", "d") == ALIVE  # each side keeps itself
    c.blocked.clear()
    healed = c.now
    while not all(c.state(x, y) == ALIVE for x in "abcd" for y in "abcd"):
        assert c.now - healed < 3.0, [(x, y, c.state(x, y)) for x in "abcd" for y in "abcd"]
        c.run(0.05, dt=0.01)
    c.run(2.0, dt=0.02)  # and it stays merged
    assert all(c.state(x, y) == ALIVE for x in "abcd" for y in "abcd")


def test_reconnect_tries_dead_members_only_and_gives_up_after_its_timeout() -> None:
    cfg = dataclasses.replace(LOCAL, reconnect_timeout_s=3.0)
    c = Mini("a", "b", "c", config=cfg)
    c.join_all()
    c.handle("c", c["c"].leave(c.now))
    c.down |= {"b", "c"}
    c.run(1.5, dt=0.02)
    assert c.state("a", "b") == DEAD and c.state("a", "c") == LEFT
    t0 = c.now
    c.run(1.0, dt=0.02)
    tries = [e.to_addr for t, src, e in c.sent if src == "a" and t >= t0 and isinstance(e.msg, PushPull)]
    assert tries and set(tries) == {addr("b")}  # never the member that left
    c.run(cfg.reconnect_timeout_s, dt=0.02)
    t1 = c.now
    c.run(2.0, dt=0.02)
    assert not [e for t, src, e in c.sent if src == "a" and t >= t1 and isinstance(e.msg, PushPull)]
