"""Values the SWIM state machine hands out (effects, member views) and its mutable member record."""

from __future__ import annotations

from dataclasses import dataclass

from .swim_messages import MemberUpdate, SwimMessage


@dataclass(frozen=True, slots=True)
class Member:
    """What this node believes about one member (itself included)."""

    node_id: str
    addr: str
    incarnation: int
    state: str
    meta_version: int
    meta: bytes
    since: float  # when ``state`` began, on this node's clock


@dataclass(frozen=True, slots=True)
class Send:
    to_addr: str
    msg: SwimMessage


@dataclass(frozen=True, slots=True)
class MemberChanged:
    member: Member
    previous: str | None  # the state before; None for a member just learned of
    removed: bool = False  # its tombstone expired and the record is gone


Effect = Send | MemberChanged


@dataclass(slots=True)
class MemberRecord:
    """Internal to ``Swim``: the mutable record behind a ``Member`` view."""

    node_id: str
    addr: str
    incarnation: int
    state: str
    meta_version: int
    meta: bytes
    since: float
    by: str  # who made the claim we hold (accuser for suspect/dead)
    key: bytes = b""  # the member's identity key and its signature over addr, incarnation, meta (and leave)
    sig: bytes = b""

    def update(self) -> MemberUpdate:
        return MemberUpdate(self.node_id, self.addr, self.incarnation, self.state, self.meta_version, self.meta,
                            self.by, self.key, self.sig)

    def view(self) -> Member:
        return Member(self.node_id, self.addr, self.incarnation, self.state, self.meta_version, self.meta,
                      self.since)
