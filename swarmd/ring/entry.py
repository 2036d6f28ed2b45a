"""The entry side of ring sessions: open a chain, feed the prompt, receive the tokens.

Any node can be an entry, even one without layers: it needs only the tokenizer. The entry keeps each
session's token history (in :class:`~swarmd.ring.generation.Generation`) for replay after a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import CapacityError, KVBudgetExceeded, NoChain, PeerUnavailable, StepTimeout, SwarmdError, Unresponsive
from ..types import GenerationRequest
from ..wire.messages import (
    AuditSample,
    Forward,
    Hop,
    Message,
    SessionAccepted,
    SessionClose,
    SessionError,
    SessionOpen,
    TokenOut,
)
from .audit import Auditor, AuditPlan, SessionAudit
from .samples import Evidence, agree

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[None]]  # (hop, *messages)
CLOSE_WAIT_S = 0.25  # SessionClose to a stage whose link is not up is given up after this
# (nodes to avoid where another chain exists, nodes to exclude outright) -> the best chain, or None
Planner = Callable[[frozenset[str], frozenset[str]], list[Hop] | None]


class StageFailed(SwarmdError):
    status = 502
    code = "stage_failed"


class OutputMismatch(StageFailed):
    """A referee found the audited stage's output wrong: the session is replayed without it."""

    code = "output_mismatch"


def error_from(msg: SessionError) -> SwarmdError:
    if msg.code == KVBudgetExceeded.code:
        exc: SwarmdError = KVBudgetExceeded(f"node {msg.node_id}: {msg.message}")
    elif msg.code in ("unavailable", "overloaded", "not_ready", "shutting_down"):
        exc = CapacityError(f"node {msg.node_id}: {msg.message}")
    else:
        exc = StageFailed(f"node {msg.node_id} failed the session ({msg.code}): {msg.message}")
    exc.failed_node = msg.node_id
    return exc


@dataclass(frozen=True)
class Token:
    step: int
    token: int
    done: bool


class RingSession:
    """One session's view from its entry: the chain and an inbox of tokens or an error."""

    def __init__(self, entry: RingEntry, session_id: str, chain: list[Hop], request: GenerationRequest,
                 seed: int) -> None:
        self.entry = entry
        self.session_id = session_id
        self.chain = chain
        self.request = request
        self.seed = seed
        self.inbox: asyncio.Queue[Token | SwarmdError] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.closed = False
        self.plan: AuditPlan | None = None  # the audit asked for at open
        self.audit: SessionAudit | None = None  # set once the shadow accepted
        self.report_hop = -1  # a referee session: this hop reports its output instead of going on
        self.reports: asyncio.Queue[AuditSample] = asyncio.Queue(maxsize=64)  # a referee's reports

    async def open(self, timeout: float) -> None:
        """Send SessionOpen to every stage at once and wait until all accepted, at most ``timeout``.

        Every ``accept_timeout_s`` the stages that have not accepted yet are pinged; one that answered no
        ping in that window is unreachable (a partition, a frozen process): raises ``Unresponsive``
        naming them. A stage that answers pings (so it has our SessionOpen) but is slow to accept is
        waited for."""
        req, e = self.request, self.entry
        loop = asyncio.get_running_loop()
        self.pending = {h.node_id: loop.create_future() for h in self.chain}
        sp = req.sampling

        plan = self.plan
        base = SessionOpen(self.session_id, e.self_hop, tuple(self.chain), 0,
                           len(req.prompt_ids) + req.max_tokens, len(req.prompt_ids), req.max_tokens,
                           sp.temperature, sp.top_p, sp.top_k, self.seed, tuple(sorted(req.stop_token_ids)))

        async def open_hop(i: int, hop: Hop, report: bool = False) -> None:
            msg = replace(base, hop=i, report=report or i == self.report_hop)
            if plan is not None and (report or i in plan.insiders(len(self.chain))):
                msg = replace(msg, audit_hop=plan.hop, verifier=plan.verifier, audit_seed=plan.seed)
            try:
                await e.send(hop, msg)
            except PeerUnavailable as exc:
                exc.failed_node = hop.node_id
                raise
            e.nudge(hop.node_id)
            await self.pending[hop.node_id]

        shadow = None
        if plan is not None:
            self.pending[plan.verifier.node_id] = loop.create_future()
            shadow = asyncio.ensure_future(open_hop(plan.hop, plan.verifier, report=True))
        try:
            await self._open_chain(open_hop, timeout)
        except BaseException:
            if shadow is not None:
                shadow.cancel()
            raise
        if shadow is not None and plan is not None:
            try:  # a shadow that cannot join costs this session its check, nothing more
                await asyncio.wait_for(shadow, max(e.accept_timeout_s, 0.05))
                self.audit = SessionAudit(plan, list(self.chain), e.audit_dtype([*self.chain, plan.verifier]),
                                          sp.temperature <= 0)
            except (SwarmdError, OSError, TimeoutError) as exc:
                log.info("session %s: shadow %s did not join (%s); not checked", self.session_id[:8],
                         plan.verifier.node_id, exc)
                if e.auditor is not None:
                    e.auditor.stats.abandoned += 1

    async def _open_chain(self, open_hop: Callable[[int, Hop], Awaitable[None]], timeout: float) -> None:
        e = self.entry
        tasks = {asyncio.ensure_future(open_hop(i, hop)): hop.node_id for i, hop in enumerate(self.chain)}
        deadline = time.monotonic() + timeout
        try:
            while True:
                window = time.monotonic()
                done, waiting = await asyncio.wait(tasks, timeout=max(0.0, min(e.accept_timeout_s, deadline - window)),
                                                   return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if not waiting:
                    return
                slow = frozenset(tasks[t] for t in waiting)
                silent = frozenset(n for n in slow if not e.answered_since(n, window))
                if silent or time.monotonic() >= deadline:
                    raise Unresponsive(f"stage(s) {', '.join(sorted(silent or slow))} did not accept the session "
                                       f"{'and answered no ping ' if silent else ''}within "
                                       f"{min(e.accept_timeout_s, timeout) if silent else timeout:g}s", silent or slow)
                for n in slow:
                    e.nudge(n)
        finally:
            for task in tasks:
                task.cancel()

    async def feed(self, token_ids: Sequence[int], start_pos: int, chunk: int, step: int = 0) -> None:
        """Send the prompt (or a replayed history) to the first stage in pipelined chunks; the last chunk
        samples generation step ``step`` (0 for a prompt, the number of tokens already generated for a replay)."""
        first = self.chain[0]
        pos = start_pos
        end = start_pos + len(token_ids)
        while pos < end:
            n = min(chunk, end - pos)
            last = pos + n == end
            part = tuple(token_ids[pos - start_pos: pos - start_pos + n])
            fwd = Forward(self.session_id, pos, step, last, part, None)
            try:
                await self.entry.send(first, fwd)
            except PeerUnavailable as exc:
                exc.failed_node = first.node_id
                raise
            if self.audit is not None and self.audit.plan.hop == 0 and self.audit.abandoned is None:
                try:  # the entry feeds the first hop, so it feeds its shadow too
                    await self.entry.send(self.audit.plan.verifier, fwd)
                except (SwarmdError, OSError) as exc:
                    self.audit.abandon(f"shadow unreachable: {exc}")
            pos += n

    async def tee_token(self, step: int, token: int) -> None:
        """A one-hop chain whose only hop is audited feeds itself its next step: the entry copies each
        accepted token to the shadow instead (that hop must not know it is watched)."""
        audit = self.audit
        if audit is None or audit.plan.hop != 0 or len(self.chain) != 1 or audit.abandoned is not None \
                or step + 1 >= self.request.max_tokens:
            return
        fwd = Forward(self.session_id, len(self.request.prompt_ids) + step, step + 1, True, (token,), None)
        try:
            await self.entry.send(audit.plan.verifier, fwd)
        except (SwarmdError, OSError) as exc:
            audit.abandon(f"shadow unreachable: {exc}")

    async def next_token(self, timeout: float) -> Token:
        try:
            async with asyncio.timeout(timeout):
                item = await self.inbox.get()
        except TimeoutError:
            raise StepTimeout(f"no token from the ring within {timeout}s") from None
        if isinstance(item, SwarmdError):
            raise item
        return item

    async def close(self, reason: str) -> None:
        """Tell every stage the session is over: best effort, at once, and never waiting more than
        ``CLOSE_WAIT_S`` on a stage whose link is down (it frees the session after its idle timeout)."""
        if self.closed:
            return
        self.closed = True
        self.entry.sessions.pop(self.session_id, None)

        async def close_hop(hop: Hop) -> None:
            try:
                await self.entry.send(hop, SessionClose(self.session_id, reason))
            except (SwarmdError, OSError) as exc:
                log.debug("close of %s not delivered to %s: %s", self.session_id[:8], hop.node_id, exc)

        hops = list(self.chain) + ([self.plan.verifier] if self.plan is not None else [])
        sends = [asyncio.ensure_future(close_hop(hop)) for hop in hops]
        _, late = await asyncio.wait(sends, timeout=CLOSE_WAIT_S)
        for task in late:
            task.cancel()


class RingEntry:
    """Owns the sessions this node is the entry of, and routes the replies to them."""

    def __init__(self, self_hop: Hop, send: Send, planner: Planner, *, accept_timeout_s: float = 0.5,
                 answered_since: Callable[[str, float], bool] = lambda node_id, since: True,
                 nudge: Callable[[str], None] = lambda node_id: None, auditor: Auditor | None = None,
                 audit_dtype: Callable[[Sequence[Hop]], str] = lambda chain: "float32",
                 on_dissent: Callable[[str, str], None] = lambda node_id, why: None) -> None:
        self.self_hop = self_hop
        self.send = send
        self.planner = planner
        self.accept_timeout_s = accept_timeout_s  # a stage silent this long while opening is unreachable
        self.answered_since = answered_since  # (node id, since) -> it answered a ping since then
        self.nudge = nudge  # ping a node's link now
        self.auditor = auditor  # output verification (None: off)
        self.audit_dtype = audit_dtype  # the dtype whose tolerance applies to a chain's outputs
        self.on_dissent = on_dissent  # (node id, why): a referee found this member computing wrong
        self.sessions: dict[str, RingSession] = {}

    async def open(self, session_id: str, request: GenerationRequest, seed: int, timeout: float,
                   avoid: frozenset[str] = frozenset(), exclude: frozenset[str] = frozenset()) -> RingSession:
        """Open a session on the best chain, steering clear of ``avoid`` when another chain exists and never
        using ``exclude``. Raises ``NoChain`` at once when no chain covers the model."""
        chain = self.planner(avoid, exclude)
        if chain is None:
            raise NoChain("no chain of reachable nodes covers every layer of the model"
                          + (f" without {', '.join(sorted(exclude))}, which did not answer" if exclude else ""))
        sess = RingSession(self, session_id, chain, request, seed)
        if self.auditor is not None:
            sess.plan = self.auditor.choose(chain)
        self.sessions[session_id] = sess
        try:
            await sess.open(timeout)
        except BaseException:
            await sess.close("open failed")
            raise
        return sess

    async def referee(self, sess: RingSession, step: int, history: Sequence[int], chunk: int,
                      timeout: float) -> str | None:
        """Settle a disagreement at ``step`` between the audited hop of ``sess`` and its shadow: a third
        replica of the span, fed ``history`` through the same upstream hops, computes the step again. The
        party it contradicts (and the other agrees with it) is reported to ``on_dissent`` and returned;
        None when no third replica exists or its answer settles nothing."""
        audit = sess.audit
        assert audit is not None and self.auditor is not None
        stats = self.auditor.stats
        hop, shadow = audit.audited, audit.plan.verifier
        leave_out = frozenset(h.node_id for h in sess.chain) | {shadow.node_id}
        judges = self.auditor.replicas(hop.start, hop.end, leave_out)
        observed, claimed = audit.observed.get(step), audit.shadow.get(step)
        if not audit.greedy and audit.last_hop:
            stats.inconclusive += 1  # honest samplers may draw differently at a boundary: never a verdict
            return None
        if not judges or observed is None or claimed is None:
            stats.inconclusive += 1
            log.warning("session %s: %s and its shadow %s disagree at step %d and no third replica can decide",
                        sess.session_id[:8], hop.node_id, shadow.node_id, step)
            return None
        stats.referees += 1
        chain = [*sess.chain[: audit.plan.hop], judges[0]]
        request = replace(sess.request, prompt_ids=tuple(history), max_tokens=1)
        ref = RingSession(self, uuid.uuid4().hex, chain, request, sess.seed)
        ref.report_hop = len(chain) - 1
        self.sessions[ref.session_id] = ref
        try:
            await ref.open(timeout)
            await ref.feed(history, 0, chunk, step)
            async with asyncio.timeout(timeout):
                while (msg := await ref.reports.get()).step != step:
                    pass
            truth = Evidence.of(msg)
        except (SwarmdError, OSError, TimeoutError) as exc:
            stats.inconclusive += 1
            log.warning("session %s: referee %s failed: %s", sess.session_id[:8], judges[0].node_id, exc)
            return None
        finally:
            await ref.close("referee done")
        dtype = self.audit_dtype([*sess.chain, shadow, judges[0]])  # the loosest of the three parties
        first_ok = agree(truth, observed, dtype, audit.greedy)
        shadow_ok = agree(truth, claimed, dtype, audit.greedy)
        if first_ok == shadow_ok:
            stats.inconclusive += 1
            return None
        wrong = shadow.node_id if first_ok else hop.node_id
        stats.quarantined += 1
        self.on_dissent(wrong, f"output of layers [{hop.start}, {hop.end}) at step {step} contradicted by "
                               f"{judges[0].node_id} and {(hop if first_ok else shadow).node_id}")
        return wrong

    def handle(self, msg: Message, sender: str) -> None:
        sess = self.sessions.get(getattr(msg, "session_id", ""))
        if sess is None:
            return
        if isinstance(msg, TokenOut):
            if sender != sess.chain[-1].node_id or sess.report_hop >= 0:
                log.warning("token for %s from %s, not the last stage: dropped", sess.session_id[:8], sender)
                return
            sess.inbox.put_nowait(Token(msg.step, msg.token, msg.done))
        elif isinstance(msg, AuditSample):
            if sess.report_hop >= 0:
                if sender == sess.chain[sess.report_hop].node_id and not sess.reports.full():
                    sess.reports.put_nowait(msg)
            elif sess.audit is not None:
                sess.audit.receive(sender, msg)
        elif isinstance(msg, SessionAccepted):
            fut = sess.pending.get(sender)
            if fut is not None and not fut.done() and msg.node_id == sender:
                fut.set_result(None)
        elif isinstance(msg, SessionError):
            if sess.plan is not None and sender == sess.plan.verifier.node_id == msg.node_id:
                fut = sess.pending.get(sender)
                if fut is not None and not fut.done():
                    fut.set_exception(error_from(msg))
                elif sess.audit is not None:
                    sess.audit.abandon(f"shadow failed: {msg.message}")
                return
            if sender not in {h.node_id for h in sess.chain} or msg.node_id != sender:
                return
            err = error_from(msg)
            if isinstance(err, CapacityError):
                err.retry_after_s = max(1, int(msg.retry_after or 1))
            fut = sess.pending.get(sender)
            if fut is not None and not fut.done():
                fut.set_exception(err)
            else:
                sess.inbox.put_nowait(err)

    def peer_lost(self, node_id: str) -> None:
        """A node dropped off: every session routed through it fails now rather than at its timeout."""
        for sess in list(self.sessions.values()):
            if sess.audit is not None and sess.audit.plan.verifier.node_id == node_id:
                sess.audit.abandon(f"lost the connection to shadow {node_id}")
            if any(h.node_id == node_id for h in sess.chain):
                err = StageFailed(f"lost the connection to stage {node_id}")
                err.failed_node = node_id
                for fut in sess.pending.values():
                    if not fut.done():
                        fut.set_exception(err)
                sess.inbox.put_nowait(err)
