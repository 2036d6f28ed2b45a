"""Signed gossip: this node signs its own record; every other member's record must carry that member's
signature, under the key its node id was first seen with. Pure (no I/O, no clock).

What it stops: a member forging another member's address, incarnation, metadata (spans, load, health,
quarantines, bans) or leave, or claiming it alive at a new incarnation (a refutation only the member can
make). What it cannot stop, by SWIM's design: any member may *accuse* another (suspect, dead); the
accused refutes with a higher incarnation that only it can sign.

A node id is pinned to the first key that signs for it (trust on first use, for the life of the
process). A banned key is refused everywhere: its records are dropped, its node ids refused on links.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ..wire.identity import Identity, attestation, fingerprint, verify
from .swim_messages import ALIVE, LEFT, MemberUpdate

VERIFIED_CACHE = 4096  # signatures already checked (relayed records repeat a lot)
MAX_PINS = 65536
MAX_BANS = 1024  # fingerprints refused in all (gossiped bans beyond it are ignored, and logged by the node)


class Attestor:
    def __init__(self, identity: Identity, self_id: str) -> None:
        self.identity = identity
        self.self_id = self_id
        self.pins: dict[str, bytes] = {self_id: identity.public}  # node id -> its key
        self.banned: set[str] = set()  # key fingerprints
        self._verified: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._fingerprints: dict[bytes, str] = {}  # key -> fingerprint, for the pinned keys

    def pin(self, node_id: str, key: bytes) -> bytes:
        """Pin ``node_id`` to ``key`` unless it is pinned already (or the table is full); returns its pin
        (``key`` itself when the table is full: callers then rely on the member record's key)."""
        pinned = self.pins.get(node_id)
        if pinned is None and len(self.pins) < MAX_PINS:
            self.pins[node_id] = pinned = key
        return pinned if pinned is not None else key

    def sign(self, node_id: str, addr: str, incarnation: int, meta_version: int, meta: bytes,
             state: str) -> tuple[bytes, bytes]:
        """(key, signature) for this node's own record."""
        data = attestation(node_id, addr, incarnation, meta_version, meta, state == LEFT)
        return self.identity.public, self.identity.sign(data)

    def check(self, u: MemberUpdate) -> str | None:
        """Why ``u`` must be dropped (unsigned, banned, another key than the pinned one, bad signature), or None."""
        if not u.key or not u.sig:
            return "unsigned"
        if fingerprint(u.key) in self.banned and u.state == ALIVE:
            return "banned"  # it is never believed alive again; claims that it is gone still count
        pinned = self.pins.get(u.node_id)
        if pinned is not None and pinned != u.key:
            return "forged"  # another key speaks for a known node id
        data = attestation(u.node_id, u.addr, u.incarnation, u.meta_version, u.meta, u.state == LEFT)
        memo = u.sig + data
        if memo in self._verified:
            self._verified.move_to_end(memo)
        else:
            if not verify(u.key, data, u.sig):
                return "bad_signature"
            self._verified[memo] = None
            while len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        self.pin(u.node_id, u.key)
        return None

    def ban(self, fingerprints: Iterable[str]) -> set[str]:
        """Add bans (at most ``MAX_BANS`` in all); returns the fingerprints that were new."""
        new = {f for f in fingerprints if f not in self.banned and f != self.identity.fingerprint}
        new = set(sorted(new)[: max(0, MAX_BANS - len(self.banned))])
        self.banned |= new
        return new

    def _fingerprint(self, key: bytes) -> str:
        fp = self._fingerprints.get(key)
        if fp is None:
            fp = self._fingerprints[key] = fingerprint(key)
        return fp

    def fingerprint_of(self, node_id: str) -> str | None:
        key = self.pins.get(node_id)
        return self._fingerprint(key) if key is not None else None

    def banned_ids(self) -> set[str]:
        """Node ids whose pinned key is banned."""
        if not self.banned:
            return set()
        return {n for n, key in self.pins.items() if self._fingerprint(key) in self.banned}
