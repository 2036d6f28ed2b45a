"""Every peer-to-peer message, as a frozen dataclass with an append-only numeric tag.

The tags are part of the protocol: never reuse or renumber one; add new messages with new tags.
Field order is the wire order. ``proto_spec.md`` §6 lists the same catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..types import TensorBlob

PROTOCOL_VERSION = 3

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Hop:
    """One stage of a session's chain: the node, how to reach it, and the layers it runs."""

    node_id: str
    addr: str
    start: int
    end: int


class Message:
    TAG: ClassVar[int]
    CAP: ClassVar[int]  # largest encoded body accepted for this type, checked before decoding


# --- handshake (plaintext, before keys exist; tiny frames) ------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello(Message):
    TAG: ClassVar[int] = 1
    CAP: ClassVar[int] = 256
    version: int
    key_ids: tuple[bytes, ...]  # ids of the keys the client holds, newest first (empty: insecure)
    nonce: bytes  # 32 random bytes


@dataclass(frozen=True, slots=True)
class ServerHello(Message):
    TAG: ClassVar[int] = 2
    CAP: ClassVar[int] = 256
    version: int
    key_id: bytes  # the key the server chose (empty: insecure)
    nonce: bytes
    mac: bytes  # HMAC proving the server holds that key


@dataclass(frozen=True, slots=True)
class ClientAuth(Message):
    TAG: ClassVar[int] = 3
    CAP: ClassVar[int] = 128
    mac: bytes  # HMAC proving the client holds the key


# --- membership and liveness (encrypted) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Sent by each side right after the handshake; a span of ``(-1, -1)`` means no layers."""

    TAG: ClassVar[int] = 10
    CAP: ClassVar[int] = 4 * KIB
    node_id: str
    listen: str
    software: str
    model: str
    num_layers: int
    hidden_size: int
    span_start: int
    span_end: int
    device: str
    # The sender's Ed25519 identity key, and its signature over this connection's handshake transcript
    # and node id (wire/identity.hello_proof): who is at the other end, bound to this connection.
    identity: bytes = b""
    proof: bytes = b""
    # The sender's wall clock when it sent this (ms since the Unix epoch; 0: unknown): clock skew for
    # ``swarmctl doctor``. Whether the sender announces itself by mDNS (doctor: is multicast blocked?).
    wall_ms: int = 0
    mdns: bool = False


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TAG: ClassVar[int] = 11
    CAP: ClassVar[int] = 64
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[int] = 12
    CAP: ClassVar[int] = 64
    nonce: int


# --- ring sessions (encrypted) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionOpen(Message):
    """Entry -> every stage: reserve a KV cache and learn your place in the chain."""

    TAG: ClassVar[int] = 20
    CAP: ClassVar[int] = 64 * KIB
    session_id: str
    entry: Hop  # where tokens go (start = end = 0)
    chain: tuple[Hop, ...]
    hop: int  # index of the receiving stage in ``chain``
    capacity: int  # KV positions to reserve
    prompt_len: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop_token_ids: tuple[int, ...]
    # Output verification (proto_spec.md §12). ``audit_hop``: the hop whose outputs are spot-checked
    # (-1: none); ``verifier``: the replica that shadows it, to which whoever feeds that hop also sends
    # each forward; ``report``: the receiver is a shadow or referee, whose sampled outputs go to the entry
    # as ``AuditSample`` instead of onwards.
    audit_hop: int = -1
    verifier: Hop | None = None
    report: bool = False
    audit_seed: int = 0  # weights of the row digest (samples.position_weights); never sent to the audited hop


@dataclass(frozen=True, slots=True)
class SessionAccepted(Message):
    TAG: ClassVar[int] = 21
    CAP: ClassVar[int] = 1 * KIB
    session_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class SessionError(Message):
    """A stage could not open or continue a session; ``code`` is one of proto_spec.md §7."""

    TAG: ClassVar[int] = 22
    CAP: ClassVar[int] = 8 * KIB
    session_id: str
    node_id: str
    code: str
    message: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class Forward(Message):
    """Positions ``[start_pos, start_pos + n)`` of a session: token ids (first stage) or hidden states."""

    TAG: ClassVar[int] = 23
    CAP: ClassVar[int] = 256 * MIB  # further bounded by the connection's frame cap
    session_id: str
    start_pos: int
    step: int  # generation step this forward produces when ``sample`` (RNG index)
    sample: bool  # the last stage samples a token after this forward
    tokens: tuple[int, ...]
    hidden: TensorBlob | None


@dataclass(frozen=True, slots=True)
class TokenOut(Message):
    """Last stage -> entry: the token sampled at ``step``; ``done`` when the ring stops by itself."""

    TAG: ClassVar[int] = 24
    CAP: ClassVar[int] = 1 * KIB
    session_id: str
    step: int
    token: int
    done: bool


@dataclass(frozen=True, slots=True)
class SessionClose(Message):
    TAG: ClassVar[int] = 25
    CAP: ClassVar[int] = 1 * KIB
    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AuditSample(Message):
    """To the entry: one stage's output at the sampled position of generation step ``step``.

    From the hop after the audited one (what the audited hop really forwarded) and from the shadow:
    ``row`` is float32 ``[2, D]``, that position's hidden state and a digest of every row since the last
    report (``samples.position_weights``); from a referee, float32 ``[D]``, the hidden state alone.
    From a shadow or referee holding the last layer: the ``token`` it samples and ``top_ids``/
    ``top_logits``, the largest logits, largest first.
    """

    TAG: ClassVar[int] = 26
    CAP: ClassVar[int] = 1 * MIB
    session_id: str
    step: int
    row: TensorBlob | None
    token: int  # the token a last stage samples (-1 from a hidden stage)
    top_ids: tuple[int, ...]
    top_logits: tuple[float, ...]


# --- membership gossip (SWIM; encrypted) ----------------------------------------------------------
# Driven by ``membership/swim.py``; the rules are in proto_spec.md §11. Named Swim* where they would
# clash with the link-layer Ping/Pong above.

# Fixed msgpack overhead of one MemberUpdate (array header, ints and string headers), rounded up.
UPDATE_OVERHEAD = 48


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One gossip entry (nested struct, not a message): what a node claims about ``node_id``.

    ``incarnation`` orders liveness claims; only the member itself raises it (to refute a claim).
    ``meta_version``/``meta`` are the member's own published ``NodeMeta`` (encoded), relayed by others
    unchanged. ``by`` is who makes the claim: the accuser for ``suspect``/``dead``, the member otherwise.
    """

    node_id: str
    addr: str
    incarnation: int
    state: str  # alive | suspect | dead | left
    meta_version: int
    meta: bytes
    by: str
    # The member's Ed25519 public key and its signature over its own record (node_id, addr, incarnation,
    # meta_version, meta, state == left): relayed unchanged, also under others' suspect/dead claims.
    key: bytes = b""
    sig: bytes = b""

    def size(self) -> int:
        """Upper estimate of the encoded size in bytes, used to fill a piggyback budget."""
        return (UPDATE_OVERHEAD + len(self.node_id.encode()) + len(self.addr.encode())
                + len(self.state) + len(self.meta) + len(self.by.encode()) + len(self.key) + len(self.sig))


@dataclass(frozen=True, slots=True)
class SwimPing(Message):
    """Probe: the receiver answers ``SwimAck(seq)`` to ``sender_addr`` if it is ``target`` (or it is "")."""

    TAG: ClassVar[int] = 30
    CAP: ClassVar[int] = 16 * KIB
    seq: int
    sender: str
    sender_addr: str
    target: str  # node id the sender means to probe; "" when only the address is known
    piggyback: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class SwimAck(Message):
    """Answer to a ``SwimPing``; a helper forwards the target's answer with the requester's ``seq``."""

    TAG: ClassVar[int] = 31
    CAP: ClassVar[int] = 16 * KIB
    seq: int
    sender: str
    piggyback: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class PingReq(Message):
    """Indirect probe: please ping ``target`` at ``target_addr`` and forward its ack as ``SwimAck(seq)``."""

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

    ``join`` marks a joining node's exchange with a seed (informational). ``dead`` entries merge as ``suspect``.
    """

    TAG: ClassVar[int] = 33
    CAP: ClassVar[int] = 4 * MIB
    sender: str
    sender_addr: str
    join: bool
    reply: bool
    states: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class Gossip(Message):
    """Updates pushed without a probe (leave, refutation); no answer."""

    TAG: ClassVar[int] = 34
    CAP: ClassVar[int] = 16 * KIB
    sender: str
    piggyback: tuple[MemberUpdate, ...]


# --- node metadata (the opaque ``MemberUpdate.meta``; encoded by codec.encode_meta) ----------------


@dataclass(frozen=True, slots=True)
class SpanState:
    """A span of decoder layers a node holds, and what it does with it."""

    start: int
    end: int
    state: str  # loading | serving | draining


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """What a node publishes about itself through gossip; only the node itself changes it."""

    VERSION: ClassVar[int] = 2
    CAP: ClassVar[int] = 2048  # = membership MAX_META_BYTES
    MAX_QUARANTINED: ClassVar[int] = 16
    MAX_BANNED: ClassVar[int] = 32
    software: str
    protocol: int
    model: str  # source name of the served model
    num_layers: int
    device: str
    memory_bytes: int  # budget for weights plus KV cache
    dtype_bytes: int  # bytes per weight in its dtype (placement compares memory in float32 terms)
    seconds_per_layer: float  # measured per decode token; 0: not measured (holds nothing by placement)
    spans: tuple[SpanState, ...]
    sessions: int  # sessions through this node's stages now
    queue: int  # forwards waiting at its stages
    health: str  # starting | serving | draining | degraded
    pinned: bool  # spans fixed by configuration (--layers START:END or none): placement keeps them
    quarantined: tuple[str, ...] = ()  # members this node's output checks found wrong (trust.MAX_PUBLISHED at most)
    banned: tuple[str, ...] = ()  # identity key fingerprints this node refuses (node_safety.MAX_BANS_PUBLISHED)


CATALOGUE: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (ClientHello, ServerHello, ClientAuth, Hello, Ping, Pong, SessionOpen, SessionAccepted,
                SessionError, Forward, TokenOut, SessionClose, AuditSample, SwimPing, SwimAck, PingReq, PushPull,
                Gossip)
}
SWIM_TAGS = frozenset({SwimPing.TAG, SwimAck.TAG, PingReq.TAG, PushPull.TAG, Gossip.TAG})
HANDSHAKE_TAGS = frozenset({ClientHello.TAG, ServerHello.TAG, ClientAuth.TAG})
