"""A stage: runs its span for every session routed through it and passes the result on.

Per session, messages are processed strictly in order by one worker task (owned here). The stage
holding the last layer samples, sends the token to the entry and, unless the session is done, straight
back to the first stage as the next step: a decode step costs one hop per stage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.interface import EngineHandle
from ..errors import CapacityError, SwarmdError
from ..types import SamplingParams, TensorBlob, TopLogits
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
from .samples import digest_report, last_row, weighted_rows

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[None]]  # (hop, *messages)
QUEUE_LIMIT = 1024
CLOSED_MEMORY = 4096


@dataclass
class StageSession:
    open: SessionOpen
    queue: asyncio.Queue[Forward] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    last_active: float = field(default_factory=time.monotonic)
    worker: asyncio.Task[None] | None = None
    # Taken off the queue (to look at what is waiting) but not run yet; runs before the queue.
    pending: collections.deque[Forward] = field(default_factory=collections.deque)
    tee_failed: bool = False  # the verifier could not be reached: this session stops copying to it
    digest: Any = None  # observer or shadow: weighted sum of the rows since the last report (numpy [D])

    @property
    def is_last(self) -> bool:
        return self.open.hop == len(self.open.chain) - 1

    @property
    def tees(self) -> bool:
        """Whatever this stage sends to the audited hop also goes to the verifier."""
        o = self.open
        if o.verifier is None or o.report or self.tee_failed:
            return False
        return o.audit_hop == o.hop + 1 or (o.audit_hop == 0 and self.is_last)

    @property
    def observes(self) -> bool:
        """This stage receives the audited hop's output: it reports what it got to the entry."""
        o = self.open
        return not o.report and o.audit_hop >= 0 and o.hop == o.audit_hop + 1


class StageService:
    def __init__(self, engine: EngineHandle, node_id: str, send: Send, idle_timeout_s: float) -> None:
        self.engine = engine
        self.node_id = node_id
        self.send = send
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[str, StageSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        # Sessions closed by their entry before their open finished here (an open can race a close
        # when another stage refused the session); bounded, oldest forgotten first.
        self._closed_early: collections.OrderedDict[str, None] = collections.OrderedDict()

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="stage-idle-sweeper")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- inbound --------------------------------------------------------------------------------

    def handle(self, msg: Message, sender: str) -> None:
        """Route one message from ``sender`` (an authenticated node id). Never blocks."""
        if isinstance(msg, SessionOpen):
            self._spawn(self._open(msg), f"open {msg.session_id[:8]}")
        elif isinstance(msg, Forward):
            sess = self.sessions.get(msg.session_id)
            if sess is None:
                log.debug("forward for unknown session %s from %s dropped", msg.session_id[:8], sender)
                return
            allowed = {sess.open.entry.node_id, sess.open.chain[-1].node_id} if sess.open.hop == 0 \
                else {sess.open.chain[sess.open.hop - 1].node_id}
            if sender not in allowed:
                log.warning("forward for session %s from %s, expected %s: dropped", msg.session_id[:8], sender,
                            sorted(allowed))
                return
            try:
                sess.queue.put_nowait(msg)
            except asyncio.QueueFull:
                self._spawn(self._fail(sess, "overloaded", "stage queue full"), "fail")
        elif isinstance(msg, SessionClose):
            sess = self.sessions.get(msg.session_id)
            if sess is None:
                self._closed_early[msg.session_id] = None
                while len(self._closed_early) > CLOSED_MEMORY:
                    self._closed_early.popitem(last=False)
            elif sender == sess.open.entry.node_id:
                self._spawn(self._close(msg.session_id, msg.reason), f"close {msg.session_id[:8]}")

    async def _open(self, msg: SessionOpen) -> None:
        err: SwarmdError | None = None
        if not 0 <= msg.hop < len(msg.chain) or (msg.chain[msg.hop].node_id != self.node_id and not msg.report):
            err = SwarmdError("this node is not that hop of the chain")
        elif (msg.chain[msg.hop].start, msg.chain[msg.hop].end) != (self.engine.stage.span.start,
                                                                     self.engine.stage.span.end):
            err = SwarmdError(f"this node holds {self.engine.stage.span}, not the requested span")
        elif msg.session_id in self.sessions:
            err = SwarmdError("session already open here")
        elif msg.capacity < msg.prompt_len + msg.max_tokens - 1 or msg.capacity < 1:
            err = SwarmdError("capacity too small for the prompt and max_tokens")
        if err is None:
            try:
                await self.engine.open_session(msg.session_id, msg.capacity)
            except SwarmdError as exc:
                err = exc
        if err is not None:
            retry = getattr(err, "retry_after_s", 0) if isinstance(err, CapacityError) else 0
            await self._reply(msg.entry, SessionError(msg.session_id, self.node_id, err.code, err.message,
                                                      float(retry)))
            return
        if self._closed_early.pop(msg.session_id, "open") is None:  # the entry gave up meanwhile
            await self.engine.close_session(msg.session_id)
            return
        sess = StageSession(msg)
        self.sessions[msg.session_id] = sess
        sess.worker = asyncio.create_task(self._work(sess), name=f"stage {msg.session_id[:8]}")
        await self._reply(msg.entry, SessionAccepted(msg.session_id, self.node_id))

    async def _reply(self, to: Hop, msg: Message) -> None:
        try:
            await self.send(to, msg)
        except (SwarmdError, OSError) as exc:
            log.warning("cannot reach entry %s: %s", to.node_id, exc)

    # --- the per-session worker -----------------------------------------------------------------

    async def _work(self, sess: StageSession) -> None:
        o = sess.open
        params = SamplingParams(o.temperature, o.top_p, o.top_k, o.seed)
        stop = frozenset(o.stop_token_ids)
        logits_here = self.engine.stage.samples
        while True:
            fwd = sess.pending.popleft() if sess.pending else await sess.queue.get()
            fwd = self._merge(sess, fwd)
            sess.last_active = time.monotonic()
            if sess.observes and fwd.hidden is not None:
                await self._digest(sess, fwd.hidden, fwd.start_pos, fwd.step if fwd.sample else None)
            sampling = (params, o.seed, fwd.step) if fwd.sample and sess.is_last and logits_here else None
            if sampling is not None and self._decodes_here(sess):
                if not await self._decode_here(sess, fwd, params, stop):
                    return
                continue
            try:
                out = await self.engine.forward(o.session_id, fwd.tokens, fwd.hidden, fwd.start_pos, sampling,
                                                report=o.report)
                if o.report:  # a shadow or referee: its outputs are evidence, not the session's next step
                    if o.audit_seed and isinstance(out, TensorBlob):  # a shadow of a hidden stage
                        await self._digest(sess, out, fwd.start_pos, fwd.step if fwd.sample else None)
                    elif fwd.sample:
                        await self._reply(o.entry, report_of(o.session_id, fwd.step, out))
                    continue
                if isinstance(out, TensorBlob):
                    nxt = o.chain[o.hop + 1]
                    sent = Forward(o.session_id, fwd.start_pos, fwd.step, fwd.sample, (), out)
                    await self.send(nxt, sent)
                    if sess.tees:
                        await self._tee(sess, sent)
                elif isinstance(out, int):
                    done = out in stop or fwd.step + 1 >= o.max_tokens
                    token = TokenOut(o.session_id, fwd.step, out, done)
                    nxt_step = Forward(o.session_id, o.prompt_len + fwd.step, fwd.step + 1, True, (out,), None)
                    if done:
                        await self.send(o.entry, token)
                    elif o.entry.node_id == o.chain[0].node_id:  # same node: one write, the ring's step first
                        await self.send(o.entry, nxt_step, token)
                    else:
                        await self.send(o.chain[0], nxt_step)  # the ring goes on first, the entry streams
                        await self.send(o.entry, token)
                    if not done and sess.tees:
                        await self._tee(sess, nxt_step)
            except asyncio.CancelledError:
                raise
            except (SwarmdError, OSError) as exc:
                code = exc.code if isinstance(exc, SwarmdError) else "peer_unavailable"
                await self._fail(sess, code, str(exc))
                return

    def _decodes_here(self, sess: StageSession) -> bool:
        """A one-hop ring with nobody else watching: the engine decodes the session by itself."""
        o = sess.open
        return len(o.chain) == 1 and not o.report and not sess.tees and not sess.observes

    async def _decode_here(self, sess: StageSession, fwd: Forward, params: SamplingParams,
                           stop: frozenset[int]) -> bool:
        """The session's sampled step and every decode step after it, inside the engine; the tokens go to
        the entry as they come. False when the session failed (and was closed)."""
        o = sess.open
        try:
            async for step, token in self.engine.decode(
                o.session_id, fwd.tokens, fwd.hidden, fwd.start_pos, params, o.seed, fwd.step,
                prompt_len=o.prompt_len, stop=stop, max_tokens=o.max_tokens,
            ):
                sess.last_active = time.monotonic()
                await self.send(o.entry, TokenOut(o.session_id, step, token, token in stop or step + 1 >= o.max_tokens))
        except asyncio.CancelledError:
            raise
        except (SwarmdError, OSError) as exc:
            await self._fail(sess, exc.code if isinstance(exc, SwarmdError) else "peer_unavailable", str(exc))
            return False
        return True

    async def _digest(self, sess: StageSession, rows: TensorBlob, start: int, step: int | None) -> None:
        """Add rows to the session's digest; at a sampled step, report the last row and the digest to the
        entry and start a new one."""
        o = sess.open
        part = weighted_rows(rows, start, o.audit_seed)
        sess.digest = part if sess.digest is None else sess.digest + part
        if step is not None:
            report = digest_report(rows, sess.digest)
            sess.digest = None
            await self._reply(o.entry, AuditSample(o.session_id, step, report, -1, (), ()))

    async def _tee(self, sess: StageSession, fwd: Forward) -> None:
        """Copy a forward to the audited hop's verifier. Best effort: an unreachable verifier ends the
        copying (the entry then gives up that check), never the session."""
        verifier = sess.open.verifier
        assert verifier is not None
        try:
            await self.send(verifier, fwd)
        except (SwarmdError, OSError) as exc:
            sess.tee_failed = True
            log.warning("session %s: verifier %s unreachable (%s); no more copies", sess.open.session_id[:8],
                        verifier.node_id, exc)

    def _merge(self, sess: StageSession, fwd: Forward) -> Forward:
        """Join prefill chunks already queued behind ``fwd`` into one step, up to the engine's batch size:
        when this stage is slower than its upstream, a long prompt costs fewer, larger forwards. The first
        chunk of a prompt that has stages after this one takes only half of what is waiting, so the next
        stage starts on it while this one runs the other half (pipelined prefill)."""
        limit = self.engine.max_batch_tokens
        while not sess.queue.empty() and len(sess.pending) < QUEUE_LIMIT:
            sess.pending.append(sess.queue.get_nowait())
        if fwd.sample or not sess.pending:
            return fwd
        if fwd.start_pos == 0 and not sess.is_last:
            waiting, end = chunk_len(fwd), fwd.start_pos + chunk_len(fwd)
            for nxt in sess.pending:
                if nxt.start_pos != end:
                    break
                waiting, end = waiting + chunk_len(nxt), end + chunk_len(nxt)
                if nxt.sample:
                    break
            limit = min(limit, max(chunk_len(fwd), -(-waiting // 2)))
        while sess.pending:
            joined = join_chunks(fwd, sess.pending[0], limit)
            if joined is None:
                break
            sess.pending.popleft()
            fwd = joined
        return fwd

    async def _fail(self, sess: StageSession, code: str, message: str) -> None:
        sid = sess.open.session_id
        log.warning("session %s failed at %s: %s", sid[:8], self.node_id, message)
        await self._reply(sess.open.entry, SessionError(sid, self.node_id, code, message, 0.0))
        await self._close(sid, code)

    async def _close(self, session_id: str, reason: str) -> None:
        sess = self.sessions.pop(session_id, None)
        if sess is None:
            return
        if sess.worker is not None and sess.worker is not asyncio.current_task():
            sess.worker.cancel()
            await asyncio.gather(sess.worker, return_exceptions=True)
        await self.engine.close_session(session_id)
        log.debug("session %s closed at %s (%s)", session_id[:8], self.node_id, reason)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout_s / 2))
            now = time.monotonic()
            for sid, sess in list(self.sessions.items()):
                if now - sess.last_active > self.idle_timeout_s and sess.queue.empty() and not sess.pending:
                    log.info("session %s idle for %.0fs: closed", sid[:8], now - sess.last_active)
                    await self._close(sid, "idle")

    async def stop(self) -> None:
        """Close every session; each entry is told at once (``SessionError``) instead of waiting for a token."""
        for task in [self._sweeper, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._sweeper, *self._tasks] if t is not None], return_exceptions=True)
        sessions = list(self.sessions.values())
        for sess in sessions:
            if sess.worker is not None:
                sess.worker.cancel()
        notices = [self._reply(sess.open.entry, SessionError(sess.open.session_id, self.node_id, "not_ready",
                                                             "this stage stopped serving its layers", 1.0))
                   for sess in sessions]
        if notices:
            await asyncio.wait([asyncio.ensure_future(n) for n in notices], timeout=2.0)
        for sess in sessions:
            await self._close(sess.open.session_id, "shutdown")


def report_of(session_id: str, step: int, out: object) -> AuditSample:
    """What a shadow or referee stage reports for a sampled step: the last row, or the top logits."""
    if isinstance(out, TensorBlob):
        return AuditSample(session_id, step, last_row(out), -1, (), ())
    if isinstance(out, TopLogits):
        return AuditSample(session_id, step, None, out.token, out.ids, out.logits)
    raise SwarmdError(f"nothing to report for step {step}")


def chunk_len(fwd: Forward) -> int:
    return len(fwd.tokens) if fwd.hidden is None else int(fwd.hidden.shape[1])


def join_chunks(a: Forward, b: Forward, limit: int) -> Forward | None:
    """``a`` then ``b`` as one forward, or None when they are not consecutive chunks of one kind."""
    if a.sample or b.start_pos != a.start_pos + chunk_len(a) or chunk_len(a) + chunk_len(b) > limit:
        return None
    if a.hidden is None and b.hidden is None:
        if not a.tokens or not b.tokens:
            return None
        return Forward(a.session_id, a.start_pos, b.step, b.sample, a.tokens + b.tokens, None)
    ha, hb = a.hidden, b.hidden
    if ha is None or hb is None or a.tokens or b.tokens or ha.dtype != hb.dtype or len(ha.shape) != 3 \
            or len(hb.shape) != 3 or ha.shape[0] != 1 or hb.shape[0] != 1 or ha.shape[2] != hb.shape[2]:
        return None
    blob = TensorBlob(ha.dtype, (1, ha.shape[1] + hb.shape[1], ha.shape[2]), bytes(ha.data) + bytes(hb.data))
    return Forward(a.session_id, a.start_pos, b.step, b.sample, (), blob)
