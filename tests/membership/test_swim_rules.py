"""membership/swim.py, one message at a time: which claims are believed, refuted, relayed or dropped."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from swim_harness import Mini, addr, claim, introduce

from swarmd.errors import ConfigError
from swarmd.membership.swim import Send, Swim, SwimConfig
from swarmd.membership.swim_messages import (
    ALIVE,
    DEAD,
    LEFT,
    MAX_INCARNATION,
    MAX_META_BYTES,
    STATES,
    SUSPECT,
    Ack,
    Gossip,
    MemberUpdate,
    Ping,
    PushPull,
)

LOCAL = SwimConfig.local()


def node(node_id: str = "a", *known: str, config: SwimConfig = LOCAL) -> Swim:
    n = Swim(node_id, addr(node_id), config, random.Random(7))
    introduce(n, *known)
    return n


def gossip(*updates: MemberUpdate, sender: str = "c") -> Gossip:
    return Gossip(sender, updates)


# --- claims about oneself -------------------------------------------------------------------------


@pytest.mark.parametrize("state", [SUSPECT, DEAD, LEFT])
def test_a_node_refutes_any_claim_that_it_is_not_alive(state: str) -> None:
    b = node("b", "a", "c")
    out = b.receive(gossip(claim("b", state, 0, by="c")), 1.0)
    assert b.incarnation == 1 and b.member("b").state == ALIVE  # type: ignore[union-attr]
    told = [e for e in out if isinstance(e, Send) and isinstance(e.msg, Gossip)]
    assert {e.to_addr for e in told} == {addr("a"), addr("c")}  # refutation pushed at once
    assert all(e.msg.piggyback == (claim("b", ALIVE, 1),) for e in told)  # type: ignore[union-attr]


def test_a_claim_at_a_higher_incarnation_is_outbid() -> None:
    b = node("b", "a")
    b.receive(gossip(claim("b", DEAD, 41, by="c")), 1.0)
    assert b.incarnation == 42


def test_stale_and_agreeing_claims_about_oneself_change_nothing() -> None:
    b = node("b", "a")
    b.receive(gossip(claim("b", SUSPECT, 0, by="c")), 1.0)
    assert b.incarnation == 1
    assert b.receive(gossip(claim("b", DEAD, 0, by="c")), 1.0) == []  # older than what we published
    b.receive(gossip(claim("b", ALIVE, 1)), 1.0)  # agrees with us
    assert b.incarnation == 1


def test_absurd_claims_about_oneself_are_dropped_not_refuted() -> None:
    b = node("b", "a", config=dataclasses.replace(LOCAL, max_incarnation_jump=100))
    b.receive(gossip(claim("b", DEAD, 101, by="c")), 1.0)
    b.receive(gossip(claim("b", DEAD, MAX_INCARNATION + 1, by="c")), 1.0)
    assert b.incarnation == 0
    assert b.dropped == {"incarnation_jump": 1, "bad_update": 1}


def test_a_node_that_left_does_not_refute() -> None:
    b = node("b", "a")
    b.leave(1.0)
    b.receive(gossip(claim("b", DEAD, 0, by="c")), 1.0)
    assert b.incarnation == 0 and b.member("b").state == LEFT  # type: ignore[union-attr]


# --- claims about others --------------------------------------------------------------------------


def test_precedence_at_one_incarnation_and_newer_incarnations_win() -> None:
    a = node("a", "b")
    a.receive(gossip(claim("b", SUSPECT, 0, by="c")), 1.0)
    a.receive(gossip(claim("b", ALIVE, 0)), 1.0)  # alive does not undo suspicion at the same incarnation
    assert a.member("b").state == SUSPECT  # type: ignore[union-attr]
    a.receive(gossip(claim("b", DEAD, 0, by="c")), 1.0)
    a.receive(gossip(claim("b", SUSPECT, 0, by="d")), 1.0)
    assert a.member("b").state == DEAD  # type: ignore[union-attr]
    a.receive(gossip(claim("b", LEFT, 0)), 1.0)  # the member's own word beats a verdict
    assert a.member("b").state == LEFT  # type: ignore[union-attr]
    a.receive(gossip(claim("b", ALIVE, 1)), 2.0)  # back, with a new incarnation
    m = a.member("b")
    assert m is not None and (m.state, m.incarnation, m.since) == (ALIVE, 1, 2.0)
    a.receive(gossip(claim("b", DEAD, 0, by="c")), 3.0)  # stale
    assert a.member("b").state == ALIVE  # type: ignore[union-attr]


def test_unknown_members_are_introduced_only_by_an_alive_claim() -> None:
    a = node("a")
    a.receive(gossip(claim("x", SUSPECT, by="c"), claim("y", DEAD, by="c"), claim("z", LEFT)), 1.0)
    assert [m.node_id for m in a.members()] == ["a"]
    a.receive(gossip(claim("x", ALIVE, 3)), 1.0)
    assert a.member("x") is not None and a.member("x").incarnation == 3  # type: ignore[union-attr]


def test_absurd_incarnation_jumps_about_others_are_dropped() -> None:
    a = node("a", "b", config=dataclasses.replace(LOCAL, max_incarnation_jump=10))
    a.receive(gossip(claim("b", ALIVE, 11)), 1.0)
    a.receive(gossip(claim("b", ALIVE, 10)), 1.0)
    assert a.member("b").incarnation == 10 and a.dropped["incarnation_jump"] == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    claim("b", "zombie"), claim("b", ALIVE, -1), claim("b", ALIVE, meta_version=-1),
    claim("b", ALIVE, meta=b"x" * (MAX_META_BYTES + 1)), dataclasses.replace(claim("b", ALIVE), addr=""),
    dataclasses.replace(claim("b", ALIVE), node_id="b" * 300),
])
def test_malformed_updates_are_dropped_and_counted(bad: MemberUpdate) -> None:
    a = node("a")
    assert a.receive(gossip(bad), 1.0) == []
    assert a.member("b") is None and a.dropped["bad_update"] == 1


def test_oversized_messages_and_own_echoes_are_dropped_whole() -> None:
    a = node("a")
    many = tuple(claim(f"n{i}", ALIVE) for i in range(LOCAL.max_piggyback + 1))
    assert a.receive(gossip(*many), 1.0) == [] and len(a.members()) == 1
    assert a.receive(Ping(1, "a", addr("a"), "a", ()), 1.0) == []
    assert a.dropped == {"oversized": 1, "bad_sender": 1}


def test_a_ping_meant_for_another_node_is_not_answered() -> None:
    a = node("a", "b")
    assert not [e for e in a.receive(Ping(5, "b", addr("b"), "old-a", ()), 1.0) if isinstance(e, Send)]
    acks = [e.msg for e in a.receive(Ping(6, "b", addr("b"), "a", ()), 1.0) if isinstance(e, Send)]
    assert len(acks) == 1 and isinstance(acks[0], Ack) and acks[0].seq == 6


def test_a_probe_from_a_stranger_starts_a_full_exchange() -> None:
    a = node("a")
    out = a.receive(Ping(5, "s", addr("s"), "", ()), 1.0)
    assert [type(e.msg) for e in out if isinstance(e, Send)] == [PushPull, Ack]
    assert [type(e.msg) for e in a.receive(Ping(6, "s", addr("s"), "", ()), 1.01) if isinstance(e, Send)] == [Ack]


def test_the_member_table_is_bounded_and_evicts_tombstones_first() -> None:
    a = node("a", "b", "c", config=dataclasses.replace(LOCAL, max_members=4))
    a.receive(gossip(claim("d", ALIVE), claim("e", ALIVE)), 1.0)
    assert {m.node_id for m in a.members()} == set("abcd") and a.dropped["table_full"] == 1
    a.receive(gossip(claim("b", DEAD, by="c")), 2.0)
    a.receive(gossip(claim("e", ALIVE)), 3.0)
    assert {m.node_id for m in a.members()} == set("acde")


# --- meta: only the owner changes it ----------------------------------------------------------


def test_meta_updates_propagate() -> None:
    c = Mini("a", "b", "c")
    c.join_all()
    c["b"].set_meta(b"span=0:12", c.now)
    c.run(0.5)
    for observer in ("a", "c"):
        m = c[observer].member("b")
        assert m is not None and (m.meta_version, m.meta) == (1, b"span=0:12")
    assert c["b"].incarnation == 0  # meta has its own version; no liveness bump needed


def test_a_third_party_cannot_change_meta_at_the_same_version() -> None:
    a = node("a", "b")
    a.receive(gossip(claim("b", ALIVE, 0, meta_version=1, meta=b"real")), 1.0)
    a.receive(gossip(claim("b", ALIVE, 0, meta_version=1, meta=b"forged"), sender="c"), 1.0)
    a.receive(gossip(claim("b", SUSPECT, 0, by="c", meta_version=1, meta=b"forged")), 1.0)
    a.receive(gossip(claim("b", ALIVE, 0, meta_version=0, meta=b"older"), sender="c"), 1.0)
    assert a.member("b").meta == b"real"  # type: ignore[union-attr]


def test_the_owner_overrides_a_forged_newer_meta_version() -> None:
    c = Mini("a", "b", "c")
    c.join_all()
    c["b"].set_meta(b"real", c.now)
    c.run(0.3)
    # c relays (or forges) a newer version of b's meta; a cannot tell and takes it as a relay ...
    c.deliver("a", gossip(claim("b", ALIVE, 0, meta_version=5, meta=b"forged")))
    assert c["a"].member("b").meta == b"forged"  # type: ignore[union-attr]
    c.run(0.5)
    # ... until b hears it, publishes its own meta above that version, and everyone follows b.
    assert c["b"].member("b").meta_version == 6  # type: ignore[union-attr]
    assert c["b"].incarnation == 0  # a meta dispute is settled by the meta version alone
    for observer in ("a", "c"):
        m = c[observer].member("b")
        assert m is not None and (m.meta_version, m.meta) == (6, b"real")


def test_set_meta_is_bounded() -> None:
    with pytest.raises(ValueError):
        node("a").set_meta(b"x" * (MAX_META_BYTES + 1), 0.0)


# --- configuration and invariants ---------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"probe_timeout": 0.5}, {"probe_timeout": 0.0}, {"push_pull_interval": 0.0}, {"suspicion_mult": 0},
    {"max_members": 1}, {"max_members": 100_000}, {"max_piggyback_bytes": 100}, {"indirect_checks": -1},
])
def test_config_rejects_nonsense(change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(SwimConfig(), **change)


def test_presets() -> None:
    assert SwimConfig.lan() == SwimConfig()
    assert SwimConfig.local().probe_interval < SwimConfig.lan().probe_interval


updates = st.builds(
    MemberUpdate, node_id=st.sampled_from("abcdef"), addr=st.just("x:1"),
    incarnation=st.integers(-2, 2**63), state=st.sampled_from((*STATES, "bogus")),
    meta_version=st.integers(-1, 5), meta=st.binary(max_size=8), by=st.sampled_from("abcdef"),
)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(updates, max_size=5), max_size=12), push_pull=st.booleans())
def test_any_claims_leave_a_node_alive_bounded_and_monotonic(batches: list[list[MemberUpdate]],
                                                             push_pull: bool) -> None:
    a = node("a", config=dataclasses.replace(LOCAL, max_members=4))
    last = (0, 0)
    for i, batch in enumerate(batches):
        msg = PushPull("z", "z:1", False, False, tuple(batch)) if push_pull else Gossip("z", tuple(batch))
        a.receive(msg, float(i))
        a.tick(float(i) + 0.5)
        me = a.member("a")
        assert me is not None and me.state == ALIVE
        assert me.incarnation >= last[0] and me.meta_version >= last[1] and me.incarnation <= MAX_INCARNATION
        last = (me.incarnation, me.meta_version)
        assert len(a.members()) <= 4
        assert all(m.state in STATES for m in a.members())
        assert a.next_deadline() > float(i) + 0.5
