"""SWIM gossip membership as a sans-I/O state machine (after hashicorp/memberlist's state.go).

Messages and ``now`` go in, effects come out: ``Send`` (a message for an address) and
``MemberChanged`` (another member appeared, changed state, address or meta, or its tombstone was removed). The
driver calls ``tick(now)`` at ``next_deadline()`` (earlier or extra calls are harmless) and hands
every decoded message to ``receive(msg, now)``. Nothing here reads a clock, sleeps or touches a socket.

Rules, in one place (``_apply``): a claim about a member replaces what we know when its incarnation
is higher, or equal with a stronger state (alive < suspect < dead < left); a newer ``meta_version``
is taken from any claim at the current incarnation or above (it relays the owner's data); claims
about this node are never believed, they are refuted by raising our incarnation (and meta version).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import replace

from .attest import Attestor
from .broadcast import BroadcastQueue
from .claims import outbid, supersedes
from .probe import Probe, ProbeOrder, Relay
from .suspicion import Suspicion, expected_confirmations, push_pull_scale, retransmit_limit, suspicion_bounds
from .swim_config import SwimConfig
from .swim_messages import (
    ALIVE,
    DEAD,
    LEFT,
    MAX_INCARNATION,
    MAX_META_BYTES,
    MAX_VERSION,
    SUSPECT,
    Ack,
    Gossip,
    MemberUpdate,
    Ping,
    PingReq,
    PushPull,
    SwimMessage,
    update_problem,
)
from .swim_types import Effect, Member, MemberChanged, MemberRecord, Send

__all__ = ["Effect", "Member", "MemberChanged", "Send", "Swim", "SwimConfig"]

log = logging.getLogger(__name__)

LIVE = (ALIVE, SUSPECT)  # members that are probed and counted in n
SEQ_MOD = 1 << 32


class Swim:
    """One node's view of the swarm. Not thread-safe; one driver feeds it messages and ticks."""

    def __init__(self, self_id: str, self_addr: str, config: SwimConfig | None = None,
                 rng: random.Random | None = None, meta: bytes = b"", attestor: Attestor | None = None) -> None:
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"meta of {len(meta)} bytes exceeds {MAX_META_BYTES}")
        self.self_id = self_id
        self.self_addr = self_addr
        self.config = config or SwimConfig()
        self.rng = rng or random.Random()
        # Signs this node's record and checks everyone else's (None: unsigned gossip, for unit tests).
        self.attestor = attestor
        self._me = MemberRecord(self_id, self_addr, 0, ALIVE, 0, meta, 0.0, self_id)
        self._sign_me()
        self._members: dict[str, MemberRecord] = {self_id: self._me}
        self._live = 1
        self._suspicions: dict[str, Suspicion] = {}
        self._queue: BroadcastQueue[MemberUpdate] = BroadcastQueue(self.config.max_broadcasts, MemberUpdate.size)
        self._probe: Probe | None = None
        self._order = ProbeOrder(self.rng)
        self._relays: dict[int, Relay] = {}
        self._seq = self.rng.randrange(SEQ_MOD)
        self._next_probe: float | None = None  # set by the first tick, with a random phase
        self._next_push_pull = math.inf
        self._next_gossip = math.inf
        self._seeds: tuple[str, ...] = ()
        self._next_join = math.inf
        self._next_stranger_sync = -math.inf
        self._failed: dict[str, tuple[str, float]] = {}  # dead member -> (last address, since): reconnect
        self._next_reconnect = math.inf
        self.left = False
        self.dropped: Counter[str] = Counter()  # reason -> count, for metrics

    # --- public API ----------------------------------------------------------------------------

    def members(self) -> tuple[Member, ...]:
        """Every member this node knows (itself and tombstones included), sorted by node id."""
        return tuple(r.view() for _, r in sorted(self._members.items()))

    def member(self, node_id: str) -> Member | None:
        rec = self._members.get(node_id)
        return None if rec is None else rec.view()

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def num_live(self) -> int:
        """n: alive and suspect members, this node included."""
        return self._live

    def join(self, seeds: tuple[str, ...] | list[str], now: float) -> list[Effect]:
        """Exchange full state with every seed address; retried until some other member is known."""
        self._seeds = tuple(a for a in seeds if a != self.self_addr)
        self._next_join = now + self.config.join_retry_interval
        return [Send(a, self._push_pull_msg(join=True, reply=True)) for a in self._seeds]

    def contact(self, addr: str, now: float) -> list[Effect]:
        """Swap full state with a candidate address (from discovery) unless a live member is there already."""
        known = any(r.addr == addr and r.state in LIVE for r in self._members.values())
        if self.left or addr == self.self_addr or known:
            return []
        return [Send(addr, self._push_pull_msg(join=True, reply=True))]

    def set_meta(self, meta: bytes, now: float) -> None:
        """Publish new metadata: raise our meta version and gossip it."""
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"meta of {len(meta)} bytes exceeds {MAX_META_BYTES}")
        if self._me.meta_version >= MAX_VERSION:
            log.error("%s: meta version at its cap, cannot publish new meta", self.self_id)
            return
        self._me.meta = meta
        self._me.meta_version += 1
        self._sign_me()
        self._queue.put(self.self_id, self._me.update())

    def leave(self, now: float) -> list[Effect]:
        """Announce that we leave: tell ``announce_fanout`` members at once; stop probing. Safe to call twice."""
        if self.left:
            return []
        self.left = True
        self._set_state(self._me, LEFT, now)
        self._sign_me()
        self._probe = None
        self._queue.put(self.self_id, self._me.update())
        return self._announce()

    def next_deadline(self) -> float:
        """When ``tick`` next has work to do (``inf``: only messages can change anything)."""
        if self._next_probe is None:
            return -math.inf  # never ticked: tick now to schedule
        cfg = self.config
        times = [min((s.deadline for s in self._suspicions.values()), default=math.inf),
                 min((r.expires for r in self._relays.values()), default=math.inf)]
        times.extend(r.since + cfg.tombstone_s for r in self._members.values()
                     if r.state in (DEAD, LEFT) and r is not self._me)
        if self.left:
            return min(times)
        times.append(self._next_push_pull)
        if self._failed:
            times.append(self._next_reconnect)
        if len(self._queue):
            times.append(self._next_gossip)
        p = self._probe
        times.append(self._next_probe if p is None else p.due(cfg.probe_interval, cfg.probe_timeout))
        if self._seeds and not self._knows_others():
            times.append(self._next_join)
        return min(times)

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        cfg = self.config
        out: list[Effect] = []
        if self._next_probe is None:
            self._next_probe = now + self.rng.random() * cfg.probe_interval
            self._next_push_pull = now + self.rng.random() * cfg.push_pull_interval
            self._next_gossip = now + self.rng.random() * cfg.gossip_interval
            self._next_reconnect = now + self.rng.random() * cfg.reconnect_interval
        self._relays = {s: r for s, r in self._relays.items() if r.expires > now}
        if not self.left:
            self._check_probe(now, out)  # first: our own confirmation may shorten a suspicion below
        for node_id, susp in list(self._suspicions.items()):
            rec = self._members.get(node_id)
            if rec is None:
                del self._suspicions[node_id]
            elif now >= susp.deadline:
                self._apply(replace(rec.update(), state=DEAD, by=self.self_id), now, out)
        self._reap(now, out)
        if self.left:
            return out
        if now >= self._next_probe and self._probe is None:
            self._start_probe(now, out)
            self._next_probe += cfg.probe_interval
            if self._next_probe <= now:  # we were stalled: do not try to catch up
                self._next_probe = now + cfg.probe_interval
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval
            self._gossip(out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_scale(cfg.push_pull_interval, self._live)
            peers = [r for r in self._members.values() if r.state == ALIVE and r is not self._me]
            if peers:
                out.append(Send(self.rng.choice(peers).addr, self._push_pull_msg(join=False, reply=True)))
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            self._reconnect(now, out)
        if self._seeds and now >= self._next_join and not self._knows_others():
            out.extend(self.join(self._seeds, now))
        return out

    def _reconnect(self, now: float, out: list[Effect]) -> None:
        """Swap full state with one member declared dead: if it was cut off, not crashed, both sides learn
        of each other (each refutes the other's verdict on it) and the views merge."""
        horizon = now - self.config.reconnect_timeout_s
        self._failed = {k: v for k, v in self._failed.items() if v[1] >= horizon}
        if self._failed:
            addr, _ = self._failed[self.rng.choice(sorted(self._failed))]
            out.append(Send(addr, self._push_pull_msg(join=False, reply=True)))

    def _gossip(self, out: list[Effect]) -> None:
        """Push pending updates to a few random alive members (nothing when nothing is pending)."""
        if not len(self._queue):
            return
        peers = [r for r in self._members.values() if r.state == ALIVE and r is not self._me]
        for r in self.rng.sample(peers, min(self.config.gossip_nodes, len(peers))):
            updates = self._piggyback()
            if not updates:
                break
            out.append(Send(r.addr, Gossip(self.self_id, updates)))

    def _check_probe(self, now: float, out: list[Effect]) -> None:
        """Advance the current probe (see ``probe.py``): ask helpers, suspect, or give up."""
        cfg = self.config
        p = self._probe
        if p is None:
            return
        target = self._members.get(p.target)
        if target is None or target.state not in LIVE:
            self._probe = None
            return
        step = p.step(now, cfg.probe_interval, cfg.probe_timeout)
        if step == "indirect":
            helpers = [r for r in self._members.values()
                       if r.state == ALIVE and r is not self._me and r is not target]
            for h in self.rng.sample(helpers, min(cfg.indirect_checks, len(helpers))):
                msg = PingReq(p.seq, self.self_id, self.self_addr, target.node_id, target.addr, self._piggyback())
                out.append(Send(h.addr, msg))
            # One more direct try with the same seq (memberlist's fallback ping, here on the same path).
            ping = Ping(p.seq, self.self_id, self.self_addr, target.node_id, self._piggyback(target))
            out.append(Send(target.addr, ping))
        elif step == "abandon":
            self._probe = None
            self.dropped["stalled_probe"] += 1
        elif step == "suspect":
            self._probe = None
            log.debug("%s: no ack from %s, suspecting it", self.self_id, target.node_id)
            self._apply(replace(target.update(), state=SUSPECT, by=self.self_id), now, out)

    def _start_probe(self, now: float, out: list[Effect]) -> None:
        node_id = self._order.next(
            lambda k: (r := self._members.get(k)) is not None and r.state in LIVE and r is not self._me,
            lambda: [k for k, r in self._members.items() if r.state in LIVE and r is not self._me])
        if node_id is None:
            return
        target = self._members[node_id]
        seq = self._next_seq()
        self._probe = Probe(seq, target.node_id, now)
        out.append(Send(target.addr, Ping(seq, self.self_id, self.self_addr, target.node_id, self._piggyback(target))))

    def _reap(self, now: float, out: list[Effect]) -> None:
        expired = [r for r in self._members.values()
                   if r.state in (DEAD, LEFT) and r is not self._me and now >= r.since + self.config.tombstone_s]
        for rec in expired:
            del self._members[rec.node_id]
            out.append(MemberChanged(rec.view(), rec.state, removed=True))

    # --- messages ------------------------------------------------------------------------------

    def receive(self, msg: SwimMessage, now: float) -> list[Effect]:
        """Handle one decoded message. Bad input is dropped and counted, never raised."""
        out: list[Effect] = []
        if not isinstance(msg, (Ping, Ack, PingReq, PushPull, Gossip)):
            self.dropped["unknown_message"] += 1
            return out
        if msg.sender == self.self_id or not msg.sender:
            self.dropped["bad_sender"] += 1
            return out
        if isinstance(msg, PushPull):
            updates, cap = msg.states, self.config.max_members
        else:
            updates, cap = msg.piggyback, self.config.max_piggyback
        if len(updates) > cap:
            self.dropped["oversized"] += 1
            log.debug("%s: dropped %s from %s with %d updates", self.self_id, type(msg).__name__, msg.sender,
                      len(updates))
            return out
        mine = (self._me.incarnation, self._me.meta_version)
        for u in updates:
            if isinstance(msg, PushPull) and u.state == DEAD:
                # A remote verdict only makes us suspect (memberlist's mergeState): the member gets
                # a suspicion timeout to refute it here too.
                u = replace(u, state=SUSPECT, by=msg.sender)
            self._apply(u, now, out)
        if (self._me.incarnation, self._me.meta_version) != mine:
            out.extend(self._announce())  # we refuted a claim: spread the answer before timers run out
        if isinstance(msg, (Ping, PingReq)):
            self._sync_stranger(msg.sender, msg.sender_addr, now, out)
        if isinstance(msg, Ping):
            if msg.target in ("", self.self_id):
                out.append(Send(msg.sender_addr, Ack(msg.seq, self.self_id, self._piggyback())))
            else:
                self.dropped["ping_for_other"] += 1
        elif isinstance(msg, Ack):
            if self._probe is not None and msg.seq == self._probe.seq:
                self._probe = None
            elif (relay := self._relays.pop(msg.seq, None)) is not None:
                out.append(Send(relay.requester_addr, Ack(relay.seq, self.self_id, self._piggyback())))
        elif isinstance(msg, PingReq):
            self._serve_ping_req(msg, now, out)
        elif isinstance(msg, PushPull) and msg.reply:
            out.append(Send(msg.sender_addr, self._push_pull_msg(join=False, reply=False)))
        return out

    def _sync_stranger(self, sender: str, addr: str, now: float, out: list[Effect]) -> None:
        """A probe from a node we do not know as live means one of us missed the other's gossip: swap
        full state with it at once (at most once per probe interval) instead of waiting for push-pull."""
        rec = self._members.get(sender)
        if self.left or (rec is not None and rec.state in LIVE) or now < self._next_stranger_sync:
            return
        self._next_stranger_sync = now + self.config.probe_interval
        out.append(Send(addr, self._push_pull_msg(join=False, reply=True)))

    def _serve_ping_req(self, msg: PingReq, now: float, out: list[Effect]) -> None:
        if msg.target == self.self_id:
            out.append(Send(msg.sender_addr, Ack(msg.seq, self.self_id, self._piggyback())))
            return
        if len(self._relays) >= self.config.max_relays:
            self.dropped["relays_full"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = Relay(msg.sender_addr, msg.seq, now + self.config.probe_interval)
        target = self._members.get(msg.target)
        out.append(Send(msg.target_addr, Ping(seq, self.self_id, self.self_addr, msg.target, self._piggyback(target))))

    # --- the one state function ----------------------------------------------------------------

    def _apply(self, u: MemberUpdate, now: float, out: list[Effect]) -> None:
        problem = update_problem(u)
        if problem is not None:
            self.dropped["bad_update"] += 1
            log.debug("%s: dropped update about %r: %s", self.self_id, u.node_id[:64], problem)
            return
        if self.attestor is not None and (problem := self.attestor.check(u)) is not None:
            self.dropped[problem] += 1
            log.debug("%s: dropped update about %r: %s", self.self_id, u.node_id[:64], problem)
            return
        if u.node_id == self.self_id:
            self._refute(u)
            return
        rec = self._members.get(u.node_id)
        if rec is None:
            if u.state == ALIVE:  # only the member's own alive claim introduces it
                self._add(u, now, out)
            return
        if u.incarnation > rec.incarnation + self.config.max_incarnation_jump:
            self.dropped["incarnation_jump"] += 1
            return
        if self.attestor is not None and rec.key and u.key != rec.key:
            self.dropped["forged"] += 1  # the record we hold was signed by another key (pins may be full)
            return
        before = rec.view()
        accepted = False
        # The member's own record (address, incarnation, meta and its signature) is taken whole from the
        # newest claim: a record is only ever relayed as its member signed it.
        newer_record = (u.incarnation, u.meta_version) > (rec.incarnation, rec.meta_version) or (
            u.state == LEFT and u.by == u.node_id and rec.state != LEFT)  # its leave is signed as a leave
        if supersedes(u, rec.incarnation, rec.state):
            rec.incarnation = u.incarnation
            rec.by = u.by
            self._set_state(rec, u.state, now, accuser=u.by)
            accepted = True
        elif u.incarnation == rec.incarnation and u.state == SUSPECT == rec.state:
            susp = self._suspicions.get(rec.node_id)
            if susp is not None and susp.confirm(u.by):
                self._queue.put(rec.node_id, u)  # pass the confirmation on (memberlist does)
        if newer_record and u.incarnation >= rec.incarnation:
            rec.addr, rec.meta_version, rec.meta, rec.key, rec.sig = u.addr, u.meta_version, u.meta, u.key, u.sig
            accepted = True
        if accepted:
            self._queue.put(rec.node_id, rec.update())
            after = rec.view()
            if (after.state, after.addr, after.meta_version) != (before.state, before.addr, before.meta_version):
                out.append(MemberChanged(after, before.state))

    def _refute(self, u: MemberUpdate) -> None:
        """A claim about this node: stale ones are ignored, one that disagrees with us is outbid."""
        me = self._me
        if self.left or u.incarnation < me.incarnation:
            return
        if u.incarnation > me.incarnation + self.config.max_incarnation_jump:
            self.dropped["incarnation_jump"] += 1
            return
        bid = outbid(u, me.incarnation, me.meta_version, me.meta)
        if bid is None:
            return
        if bid[0] > MAX_INCARNATION or bid[1] > MAX_VERSION:
            log.error("%s: cannot refute a claim at the incarnation or meta version cap", self.self_id)
            return
        me.incarnation, me.meta_version = bid
        self._sign_me()
        log.debug("%s: refuting %s claim: incarnation %d, meta version %d", self.self_id, u.state,
                  me.incarnation, me.meta_version)
        self._queue.put(self.self_id, me.update())

    def _add(self, u: MemberUpdate, now: float, out: list[Effect]) -> None:
        if len(self._members) >= self.config.max_members:
            tombs = [r for r in self._members.values() if r.state in (DEAD, LEFT) and r is not self._me]
            if not tombs:
                self.dropped["table_full"] += 1
                log.warning("%s: member table full (%d), ignoring %s", self.self_id, len(self._members), u.node_id)
                return
            del self._members[min(tombs, key=lambda r: r.since).node_id]
        rec = MemberRecord(u.node_id, u.addr, u.incarnation, ALIVE, u.meta_version, u.meta, now, u.node_id, u.key,
                           u.sig)
        self._members[rec.node_id] = rec
        self._failed.pop(rec.node_id, None)
        self._live += 1
        self._queue.put(rec.node_id, rec.update())
        self._order.insert(rec.node_id)
        out.append(MemberChanged(rec.view(), None))

    def _set_state(self, rec: MemberRecord, state: str, now: float, accuser: str = "") -> None:
        old = rec.state
        if old == state and state != SUSPECT:
            return
        if old != state:
            rec.state, rec.since = state, now
            self._live += (state in LIVE) - (old in LIVE)
            if state in LIVE and old not in LIVE and rec is not self._me:
                self._order.insert(rec.node_id)
            if state == DEAD and rec is not self._me:
                self._failed[rec.node_id] = (rec.addr, now)
                while len(self._failed) > self.config.max_members:
                    del self._failed[min(self._failed, key=lambda k: self._failed[k][1])]
            else:
                self._failed.pop(rec.node_id, None)
        if state == SUSPECT:  # a new suspicion, or one at a newer incarnation: (re)start the timer
            n = self._live
            lo, hi = suspicion_bounds(self.config.suspicion_mult, self.config.suspicion_max_timeout_mult, n,
                                      self.config.probe_interval, self.config.suspicion_min_s)
            k = expected_confirmations(self.config.suspicion_mult, n)
            self._suspicions[rec.node_id] = Suspicion(now, lo, hi, k, accuser)
        else:
            self._suspicions.pop(rec.node_id, None)

    # --- helpers -------------------------------------------------------------------------------

    def _sign_me(self) -> None:
        me = self._me
        if self.attestor is not None:
            me.key, me.sig = self.attestor.sign(me.node_id, me.addr, me.incarnation, me.meta_version, me.meta,
                                                me.state)

    def _knows_others(self) -> bool:
        return self._live > (1 if self._me.state in LIVE else 0)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MOD
        return self._seq

    def _announce(self) -> list[Effect]:
        """Push our own record to ``announce_fanout`` random members now (leave, refutation)."""
        peers = [r for r in self._members.values() if r.state == ALIVE and r is not self._me]
        chosen = self.rng.sample(peers, min(self.config.announce_fanout, len(peers)))
        return [Send(r.addr, Gossip(self.self_id, (self._me.update(),))) for r in chosen]

    def _piggyback(self, target: MemberRecord | None = None) -> tuple[MemberUpdate, ...]:
        """Updates for one message. A ping to a member we suspect always carries that suspicion (as
        memberlist's probe does), so a member that was only slow hears it at once and can refute."""
        cfg = self.config
        limit = retransmit_limit(cfg.retransmit_mult, self._live)
        if target is None or target.state != SUSPECT:
            return tuple(self._queue.take(limit, cfg.max_piggyback, cfg.max_piggyback_bytes))
        claim = target.update()
        rest = self._queue.take(limit, cfg.max_piggyback - 1, cfg.max_piggyback_bytes - claim.size())
        return (claim, *(u for u in rest if u.node_id != target.node_id))

    def _push_pull_msg(self, join: bool, reply: bool) -> PushPull:
        states = tuple(r.update() for r in self._members.values())
        return PushPull(self.self_id, self.self_addr, join, reply, states)
