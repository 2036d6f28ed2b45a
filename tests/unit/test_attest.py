"""Signed gossip: identities, the attestation rule, and SWIM with attestors (no member can forge another's
record, address, metadata, liveness or leave; a banned key is refused)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from swarmd.errors import ConfigError
from swarmd.membership.attest import Attestor
from swarmd.membership.swim import Swim
from swarmd.membership.swim_config import SwimConfig
from swarmd.membership.swim_messages import ALIVE, LEFT, SUSPECT, Gossip, MemberUpdate
from swarmd.wire.identity import Identity, attestation, fingerprint, load_or_create, verify


def signed(ident: Identity, node_id: str, incarnation: int = 0, meta_version: int = 0, meta: bytes = b"m",
           state: str = ALIVE, by: str | None = None, addr: str = "10.0.0.1:1") -> MemberUpdate:
    sig = ident.sign(attestation(node_id, addr, incarnation, meta_version, meta, state == LEFT))
    return MemberUpdate(node_id, addr, incarnation, state, meta_version, meta, by or node_id, ident.public, sig)


def test_identity_file_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity-n1.key"
    first = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create(path)
    assert again.public == first.public and again.fingerprint == fingerprint(first.public)
    data = b"hello"
    assert verify(first.public, data, again.sign(data))
    assert not verify(first.public, b"hellO", again.sign(data))
    assert not verify(first.public[:31], data, again.sign(data))
    path.write_text("not base64!\n")
    with pytest.raises(ConfigError):
        load_or_create(path)


def test_attestor_pins_the_first_key_and_refuses_forgeries() -> None:
    me, a, evil = Identity.generate(), Identity.generate(), Identity.generate()
    att = Attestor(me, "me")
    good = signed(a, "a", 3, 5)
    assert att.check(good) is None and att.pins["a"] == a.public
    assert att.check(good) is None  # cached
    assert att.check(signed(evil, "a", 4, 6)) == "forged"  # another key speaks for a
    assert att.check(signed(evil, "me")) == "forged"  # nobody speaks for this node
    tampered = dataclasses.replace(good, meta=b"spans: all of them")
    assert att.check(tampered) == "bad_signature"
    assert att.check(dataclasses.replace(good, incarnation=4)) == "bad_signature"  # liveness only a can raise
    assert att.check(dataclasses.replace(good, state=LEFT)) == "bad_signature"  # a leave only a can announce
    # An accusation carries a's own record unchanged: valid (anyone may suspect; a refutes).
    assert att.check(dataclasses.replace(good, state=SUSPECT, by="evil")) is None
    assert att.check(MemberUpdate("b", "x:1", 0, ALIVE, 0, b"", "b")) == "unsigned"
    assert att.ban([fingerprint(a.public), me.fingerprint]) == {fingerprint(a.public)}  # never bans itself
    assert att.check(good) == "banned" and att.banned_ids() == {"a"}
    assert att.check(dataclasses.replace(good, state=SUSPECT, by="me")) is None  # so it can be declared dead


def swim_pair() -> tuple[Swim, Identity, Swim, Identity]:
    ia, ib = Identity.generate(), Identity.generate()
    a = Swim("a", "10.0.0.1:1", SwimConfig.local(), meta=b"a-meta", attestor=Attestor(ia, "a"))
    b = Swim("b", "10.0.0.2:1", SwimConfig.local(), meta=b"b-meta", attestor=Attestor(ib, "b"))
    return a, ia, b, ib


def test_swim_relays_records_exactly_as_their_member_signed_them() -> None:
    a, _, b, _ = swim_pair()
    b.set_meta(b"b-meta-2", 0.0)
    own = b.member("b")
    assert own is not None and own.meta == b"b-meta-2"
    update = b._me.update()  # noqa: SLF001 - the record b gossips about itself
    a.receive(Gossip("b", (update,)), 0.0)
    seen = a.member("b")
    assert seen is not None and seen.meta == b"b-meta-2" and seen.state == ALIVE
    relayed = a._members["b"].update()  # noqa: SLF001
    assert (relayed.key, relayed.sig) == (update.key, update.sig)
    assert Attestor(Identity.generate(), "c").check(relayed) is None  # a third node accepts the relay


def test_swim_drops_a_members_forgery_of_another_members_state() -> None:
    a, _, b, ib = swim_pair()
    evil = Identity.generate()
    a.receive(Gossip("b", (b._me.update(),)), 0.0)  # noqa: SLF001
    before = a.member("b")
    forged_meta = signed(evil, "b", 0, 9, b"b holds every layer")
    forged_leave = signed(evil, "b", 0, 0, b"b-meta", state=LEFT)
    a.receive(Gossip("evil", (forged_meta, forged_leave)), 1.0)
    assert a.member("b") == before
    assert a.dropped["forged"] == 2
    # b's real key but fields it never signed
    real = b._me.update()  # noqa: SLF001
    a.receive(Gossip("evil", (dataclasses.replace(real, incarnation=7),)), 2.0)
    assert a.member("b") == before and a.dropped["bad_signature"] == 1
    # b itself raising its incarnation is believed
    b._me.incarnation = 7  # noqa: SLF001
    b._sign_me()  # noqa: SLF001
    a.receive(Gossip("b", (b._me.update(),)), 3.0)  # noqa: SLF001
    after = a.member("b")
    assert after is not None and after.incarnation == 7
    assert ib.public == a.attestor.pins["b"]  # type: ignore[union-attr]


def test_a_leave_is_relayed_with_the_leavers_own_signature() -> None:
    a, _, b, _ = swim_pair()
    a.receive(Gossip("b", (b._me.update(),)), 0.0)  # noqa: SLF001
    b.leave(1.0)
    a.receive(Gossip("b", (b._me.update(),)), 1.0)  # noqa: SLF001
    left = a.member("b")
    assert left is not None and left.state == LEFT
    relayed = a._members["b"].update()  # noqa: SLF001
    assert Attestor(Identity.generate(), "c").check(relayed) is None  # a third member believes the relay
