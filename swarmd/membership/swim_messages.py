"""SWIM gossip vocabulary: member states, bounds, and the update check. The messages themselves live in
``wire/messages.py`` (tags 30-34, proto_spec.md §11); here they keep their SWIM names (``Ping``, ``Ack``)
for the state machine, distinct from the link-layer ``wire.messages.Ping``/``Pong``.

Every message carries its sender's node id; messages that expect an answer also carry the address
the answer goes to (``sender_addr``), because a node answers on the link it opened to that address.
"""

from __future__ import annotations

from typing import Final

from ..wire.messages import UPDATE_OVERHEAD, Gossip, MemberUpdate, NodeMeta, PingReq, PushPull
from ..wire.messages import SwimAck as Ack
from ..wire.messages import SwimPing as Ping

__all__ = ["ALIVE", "DEAD", "LEFT", "SUSPECT", "STATES", "PRECEDENCE", "MAX_INCARNATION", "MAX_VERSION",
           "MAX_META_BYTES", "MAX_ID_CHARS", "MAX_UPDATE_BYTES", "Ack", "Gossip", "MemberUpdate", "Ping",
           "PingReq", "PushPull", "SwimMessage", "SWIM_MESSAGES", "update_problem"]

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
MAX_META_BYTES: Final = NodeMeta.CAP
# Largest node id / address accepted (the codec's string limit is 4096; ids and addresses are short).
MAX_ID_CHARS: Final = 256
# The largest estimated size of one update: three ids at the limit, full meta, the longest state name.
MAX_UPDATE_BYTES: Final = UPDATE_OVERHEAD + 3 * MAX_ID_CHARS + MAX_META_BYTES + len("suspect") + 32 + 64


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
    if len(u.key) not in (0, 32) or len(u.sig) not in (0, 64):
        return "identity key or signature of bad length"
    return None


SwimMessage = Ping | Ack | PingReq | PushPull | Gossip
SWIM_MESSAGES: Final = (Ping, Ack, PingReq, PushPull, Gossip)
