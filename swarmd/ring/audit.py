"""Output verification at the entry: which sessions are checked, and the comparisons of one session.

A checked session has one audited hop and a verifier: another replica of exactly that span, opened as a
shadow (``SessionOpen.report``). Whoever feeds the audited hop sends every forward to the shadow too;
the shadow reports its output at each step's sampled position, and so does the party that receives the
audited hop's real output (the next hop, or the entry itself for the last hop's token). The entry holds
each token until both reports agree (``samples.agree``); on a disagreement a third replica, fed the
session's history through the same upstream hops, decides which of the two computed wrong
(``RingEntry.referee``), and that member is quarantined.

Choice (pure, seeded): a hop whose node this entry has not seen pass ``probation_steps`` checked steps
is audited on every session that has a replica to compare with; otherwise a session is audited with
probability ``rate``. The cost is the shadow's compute: about ``rate`` times the audited span's share
of the chain.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import ProtocolError
from ..wire.messages import AuditSample, Hop
from .samples import Evidence, agree

log = logging.getLogger(__name__)

# (start, end, node ids to leave out) -> serving replicas of exactly that span, best first
Replicas = Callable[[int, int, frozenset[str]], list[Hop]]
MAX_PENDING_STEPS = 64  # reports kept per session for steps not yet compared (older ones are dropped)


@dataclass(frozen=True)
class AuditPlan:
    hop: int  # index of the audited hop in the chain
    verifier: Hop  # the shadow: same span, another node
    seed: int = 0  # secret weights of the row digests (given to the shadow and the observer only)

    def insiders(self, chain_len: int) -> set[int]:
        """Hops told of the audit: the one that feeds the audited hop (it copies to the shadow; for hop 0
        the last stage, unless that is the audited hop itself: then the entry copies) and the one after it
        (it reports what it received). Never the audited hop: a liar must not know when it is watched."""
        told = {self.hop - 1, self.hop + 1} if self.hop > 0 else {chain_len - 1, 1}
        return {i for i in told if 0 <= i < chain_len and i != self.hop}


@dataclass
class AuditStats:
    sessions: int = 0  # sessions audited
    steps: int = 0  # steps compared
    mismatches: int = 0  # steps where the audited hop and its shadow disagreed
    referees: int = 0  # third-replica decisions run
    quarantined: int = 0  # members found wrong by a referee
    inconclusive: int = 0  # mismatches no referee could settle
    abandoned: int = 0  # audits given up (shadow refused, unreachable or too slow)


class Auditor:
    """Chooses the audited hop of new sessions and keeps what the checks found, per node."""

    def __init__(self, rate: float, probation_steps: int, replicas: Replicas, seed: int | None = None) -> None:
        self.rate = rate
        self.probation_steps = probation_steps
        self.replicas = replicas
        self._rng = random.Random(seed)
        self.passed: dict[str, int] = {}  # node id -> checked steps it passed (as audited hop or shadow)
        self.stats = AuditStats()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def choose(self, chain: Sequence[Hop]) -> AuditPlan | None:
        if not self.enabled:
            return None
        in_chain = frozenset(h.node_id for h in chain)
        options = [(i, reps) for i, hop in enumerate(chain) if (reps := self.replicas(hop.start, hop.end, in_chain))]
        if not options:
            return None
        new = [(i, reps) for i, reps in options if self.passed.get(chain[i].node_id, 0) < self.probation_steps]
        draw = self._rng.random()
        pool = new or (options if draw < self.rate else [])
        if not pool:
            return None
        i, reps = pool[self._rng.randrange(len(pool))]
        self.stats.sessions += 1
        # The least proven replica shadows (ties: the cheapest), so every replica is vetted in turn, not
        # only the ones routing prefers.
        return AuditPlan(i, min(reps, key=lambda r: self.passed.get(r.node_id, 0)), secrets.randbits(62) | 1)

    def passed_step(self, *node_ids: str) -> None:
        for n in node_ids:
            self.passed[n] = self.passed.get(n, 0) + 1


@dataclass
class SessionAudit:
    """The reports of one audited session, compared step by step."""

    plan: AuditPlan
    chain: list[Hop]
    dtype: str
    greedy: bool
    observed: dict[int, Evidence] = field(default_factory=dict)  # what the audited hop really produced
    shadow: dict[int, Evidence] = field(default_factory=dict)  # what the verifier computed
    abandoned: str | None = None  # why this session stopped being checked
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def audited(self) -> Hop:
        return self.chain[self.plan.hop]

    @property
    def last_hop(self) -> bool:
        return self.plan.hop == len(self.chain) - 1

    def receive(self, sender: str, msg: AuditSample) -> None:
        """A report from the shadow, or from the hop after the audited one; anything else is dropped."""
        try:
            evidence = Evidence.of(msg)
        except ProtocolError as exc:
            log.warning("audit report from %s dropped: %s", sender, exc)
            return
        if sender == self.plan.verifier.node_id:
            book = self.shadow
        elif not self.last_hop and sender == self.chain[self.plan.hop + 1].node_id:
            book = self.observed
        else:
            return
        book[msg.step] = evidence
        while len(book) > MAX_PENDING_STEPS:
            book.pop(min(book))
        self._wake.set()

    def token(self, step: int, token: int) -> None:
        """The entry's own observation when the audited hop is the last: the token it sent."""
        if self.last_hop:
            self.observed[step] = Evidence.token_only(token)
            self._wake.set()

    def abandon(self, why: str) -> None:
        if self.abandoned is None:
            self.abandoned = why
        self._wake.set()

    async def outcome(self, step: int, timeout: float) -> bool | None:
        """True when step ``step``'s two reports agree, False when they do not, None when the audit is
        given up (abandoned, or a report is later than ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while step not in self.observed or step not in self.shadow:
            if self.abandoned is not None:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                self.abandon(f"no report for step {step} within {timeout:g}s")
                return None
        observed, shadow = self.observed.pop(step), self.shadow.pop(step)
        self.observed[step], self.shadow[step] = observed, shadow  # kept for a referee
        for book in (self.observed, self.shadow):
            for old in [s for s in book if s < step]:
                del book[old]
        return agree(observed, shadow, self.dtype, self.greedy)
