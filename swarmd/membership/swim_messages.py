"""SWIM gossip messages: typed frozen dataclasses, in the shape of ``wire/messages.py``.

Not yet in ``wire.messages.CATALOGUE``: the tags below are *proposed* (30-35, the next free decade) and
become part of the protocol once the codec learns the nested ``MemberUpdate`` struct. Field order is
the wire order. The names differ from the liveness ``Ping``/``Pong`` (tags 11/12) of the link layer by
module only; import them qualified (``swim_messages.Ping``) next to ``wire.messages``.

Every message carries its sender's node id; messages that expect an answer also carry the address
the answer goes to (``sender_addr``), because a node answers on the link it opened to that address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ..wire.messages import KIB, MIB, Message

# Member states, in precedence order for the same incarnation (see ``PRECEDENCE``).
ALIVE: Final = "alive"
SUSPECT: Final = "suspect"
DEAD: Final = "dead"
LEFT: Final = "left"
STATES: Final = (ALIVE, SUSPECT, DEAD, LEFT)
# At one incarnation a claim replaces another only if it ranks higher: a death verdict beats a
# suspicion, and an announced leave beats a verdict (it is the owner's own word).
PRECEDENCE: Final = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}

# Incarnations and meta versions live in [0, MAX_INCARNATION]. 2**62 keeps every value a positive
# msgpack int64 with room for "+1" and is unreachable by honest refutation (one bump per accusation).
# A node at the cap can no longer refute; updates above it are dropped.
MAX_INCARNATION: Final = 1 << 62
MAX_VERSION: Final = 1 << 62
# Largest opaque metadata a member may publish (memberlist's MetaMaxSize).
MAX_META_BYTES: Final = 512
# Largest node id / address accepted (the codec's string limit is 4096; ids and addresses are short).
MAX_ID_CHARS: Final = 256
# Fixed msgpack overhead of one update (array header, five ints and string headers), rounded up.
UPDATE_OVERHEAD: Final = 48
# The largest estimated size of one update: three ids at the limit, full meta, the longest state name.
MAX_UPDATE_BYTES: Final = UPDATE_OVERHEAD + 3 * MAX_ID_CHARS + MAX_META_BYTES + len("suspect")


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One gossip entry: what a node claims about ``node_id``. Nested struct, not a message.

    ``incarnation`` orders liveness claims; only the member itself raises it (to refute a claim).
    ``meta_version``/``meta`` are the member's own published state (capacity, layer span...), opaque
    here; only the owner raises the version, everyone else relays the newest version it has seen.
    ``by`` is who makes the claim: the accuser for ``suspect``/``dead``, the member itself otherwise.
    """

    node_id: str
    addr: str
    incarnation: int
    state: str  # one of STATES
    meta_version: int
    meta: bytes
    by: str

    def size(self) -> int:
        """Upper estimate of the encoded size in bytes, used to fill a piggyback budget."""
        return (UPDATE_OVERHEAD + len(self.node_id.encode()) + len(self.addr.encode())
                + len(self.state) + len(self.meta) + len(self.by.encode()))


def update_problem(u: MemberUpdate) -> str | None:
    """Why an update from the network is unacceptable, or None. Cheap checks, before any state is read."""
    if u.state not in PRECEDENCE:
        return f"unknown state {u.state!r}"
    if not 0 < len(u.node_id) <= MAX_ID_CHARS or not 0 < len(u.addr) <= MAX_ID_CHARS or len(u.by) > MAX_ID_CHARS:
        return "node id, address or accuser of bad length"
    if not 0 <= u.incarnation <= MAX_INCARNATION or not 0 <= u.meta_version <= MAX_VERSION:
        return "incarnation or meta version out of range"
    if len(u.meta) > MAX_META_BYTES:
        return f"meta of {len(u.meta)} bytes exceeds {MAX_META_BYTES}"
    return None


# --- messages (proposed tags; see the module docstring) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Probe: the receiver answers ``Ack(seq)`` to ``sender_addr`` if it is ``target`` (or ``target`` is "")."""

    TAG: ClassVar[int] = 30
    CAP: ClassVar[int] = 16 * KIB
    seq: int
    sender: str
    sender_addr: str
    target: str  # node id the sender means to probe; "" when only the address is known
    piggyback: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Answer to a ``Ping``; a helper forwards the target's answer with the requester's ``seq``."""

    TAG: ClassVar[int] = 31
    CAP: ClassVar[int] = 16 * KIB
    seq: int
    sender: str
    piggyback: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class PingReq(Message):
    """Indirect probe: please ping ``target`` at ``target_addr`` and forward its ack as ``Ack(seq)``."""

    TAG: ClassVar[int] = 32
    CAP: ClassVar[int] = 16 * KIB
    seq: int
    sender: str
    sender_addr: str
    target: str
    target_addr: str
    piggyback: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class PushPull(Message):
    """Anti-entropy: the sender's whole table (itself included); ``reply`` asks for the receiver's table.

    ``join`` marks a joining node's exchange with a seed (seeds are addresses only); informational,
    the receiver merges and answers it like any other. ``dead`` entries merge as ``suspect``.
    """

    TAG: ClassVar[int] = 33
    CAP: ClassVar[int] = 2 * MIB
    sender: str
    sender_addr: str
    join: bool
    reply: bool
    states: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class Gossip(Message):
    """Updates pushed without a probe (a leave announcement); no answer."""

    TAG: ClassVar[int] = 34
    CAP: ClassVar[int] = 16 * KIB
    sender: str
    piggyback: tuple[MemberUpdate, ...]


SwimMessage = Ping | Ack | PingReq | PushPull | Gossip
SWIM_MESSAGES: Final[tuple[type[Message], ...]] = (Ping, Ack, PingReq, PushPull, Gossip)
