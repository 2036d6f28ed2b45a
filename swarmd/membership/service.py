"""The I/O driver of SWIM: one task runs ``Swim.tick`` at its deadlines; messages from the mesh go to
``Swim.receive``; ``Send`` effects go out as best-effort gossip on the mesh's links.

The only place where the sans-I/O state machine meets the clock and the network. Every message is
checked against the authenticated sender of its connection before SWIM sees it: a node speaks only for
itself (``msg.sender`` must be the node id that passed the handshake and Hello on that connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

from ..wire.messages import Message
from .swim import MemberChanged, Send, Swim
from .swim_messages import SWIM_MESSAGES, Ack, Ping, SwimMessage

log = logging.getLogger(__name__)

Post = Callable[[str, Message], object]  # (addr, message): best effort, never raises
RTT_SAMPLES_KEPT = 256  # outstanding direct probes remembered for round-trip times


class Membership:
    """Owns the SWIM task. ``start`` once, ``stop`` once (it announces the leave first when asked)."""

    def __init__(self, swim: Swim, post: Post, on_change: Callable[[MemberChanged], None],
                 clock: Callable[[], float] = time.monotonic,
                 connect: Callable[[str], object] = lambda addr: None) -> None:
        self.swim = swim
        self._post = post
        # Opens the link to a member as soon as it is known, so the handshake is not paid inside the
        # member's first probe (which would then time out under load and raise a false suspicion).
        self._connect = connect
        self._on_change = on_change
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probes: dict[int, tuple[str, float]] = {}  # seq of a direct ping -> (target, sent at)
        self.rtt_s: dict[str, float] = {}  # smoothed round trip of direct probes, by node id
        self.last_heard: dict[str, float] = {}  # node id -> when a message from it last arrived
        self.sent: Counter[str] = Counter()  # message type -> count
        self.rejected: Counter[str] = Counter()  # reason -> count

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, seeds: Iterable[str] = ()) -> None:
        if self._task is not None:
            return
        seeds = tuple(seeds)
        if seeds:
            self._apply(self.swim.join(seeds, self._clock()))
        self._task = asyncio.create_task(self._run(), name="swim")

    async def stop(self, leave: bool = True, linger_s: float = 0.2) -> None:
        """Announce the leave (pushed to a few members at once), give it ``linger_s`` to go out, stop."""
        if leave and not self.swim.left:
            self._apply(self.swim.leave(self._clock()))
            await asyncio.sleep(linger_s)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            # Let messages that arrived while this task slept be handled first: an ack already in a
            # socket buffer must count before the probe's deadline is judged (matters on a busy loop).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self._apply(self.swim.tick(self._clock()))
            delay = self.swim.next_deadline() - self._clock()
            self._wake.clear()
            if delay > 0:
                try:
                    async with asyncio.timeout(min(delay, 5.0)):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    # --- inputs -----------------------------------------------------------------------------------

    def receive(self, msg: Message, sender: str) -> None:
        """A SWIM message from ``sender`` (the authenticated node id of the connection it came on)."""
        if not isinstance(msg, SWIM_MESSAGES):
            return
        swim_msg: SwimMessage = msg  # type: ignore[assignment]
        if swim_msg.sender != sender:
            self.rejected["sender_mismatch"] += 1
            log.warning("gossip from %s claims to come from %r: dropped", sender, swim_msg.sender[:64])
            return
        now = self._clock()
        self.last_heard[sender] = now
        if isinstance(swim_msg, Ack):
            probe = self._probes.pop(swim_msg.seq, None)
            if probe is not None and probe[0] == sender:
                sample = now - probe[1]
                old = self.rtt_s.get(sender)
                self.rtt_s[sender] = sample if old is None else 0.8 * old + 0.2 * sample
        self._apply(self.swim.receive(swim_msg, now))
        self._wake.set()  # the state machine's deadlines may have moved

    def contact(self, addr: str) -> None:
        """A candidate address (mDNS, a seed): swap full state with it; the handshake decides if it is one of us."""
        self._apply(self.swim.contact(addr, self._clock()))

    def set_meta(self, meta: bytes) -> None:
        self.swim.set_meta(meta, self._clock())
        self._wake.set()

    def forget_rtt(self, node_id: str) -> None:
        self.rtt_s.pop(node_id, None)
        self.last_heard.pop(node_id, None)

    # --- outputs ----------------------------------------------------------------------------------

    def _apply(self, effects: list) -> None:  # type: ignore[type-arg]
        for eff in effects:
            if isinstance(eff, Send):
                msg = eff.msg
                if isinstance(msg, Ping) and msg.target and msg.sender == self.swim.self_id:
                    self._probes.setdefault(msg.seq, (msg.target, self._clock()))
                    while len(self._probes) > RTT_SAMPLES_KEPT:
                        self._probes.pop(next(iter(self._probes)))
                self.sent[type(msg).__name__] += 1
                self._post(eff.to_addr, msg)
            elif isinstance(eff, MemberChanged):
                if eff.removed:
                    self.forget_rtt(eff.member.node_id)
                elif eff.previous is None or eff.member.state == "alive" and eff.previous in ("dead", "left"):
                    self._connect(eff.member.addr)
                try:
                    self._on_change(eff)
                except Exception:  # a bug in a consumer must not stop gossip
                    log.exception("member change handler failed")
