"""Which claims about a member are believed: SWIM's precedence rules as pure functions."""

from __future__ import annotations

from .swim_messages import ALIVE, PRECEDENCE, MemberUpdate


def supersedes(claim: MemberUpdate, incarnation: int, state: str) -> bool:
    """A claim replaces what we know when its incarnation is higher, or equal with a stronger state
    (alive < suspect < dead < left)."""
    return claim.incarnation > incarnation or (
        claim.incarnation == incarnation and PRECEDENCE[claim.state] > PRECEDENCE[state])


def outbid(claim: MemberUpdate, incarnation: int, meta_version: int, meta: bytes) -> tuple[int, int] | None:
    """The ``(incarnation, meta_version)`` with which a node refutes a claim about itself, or None when the
    claim agrees with it. A claim that it is not alive (or alive at a higher incarnation) is outbid by a
    higher incarnation; a claim of other meta at its version or above by a higher meta version."""
    liveness = claim.state != ALIVE or claim.incarnation > incarnation
    other_meta = claim.meta_version > meta_version or (claim.meta_version == meta_version and claim.meta != meta)
    if not liveness and not other_meta:
        return None
    return (claim.incarnation + 1 if liveness else incarnation,
            claim.meta_version + 1 if other_meta else meta_version)
