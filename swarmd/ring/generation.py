"""One generation seen from its entry node: prompt in, text deltas out, token history kept.

The history (prompt plus every sampled token) is what a replacement chain replays to rebuild its KV
caches after a failure; sampling is seeded per step, so a replayed session draws the same tokens.

Opening: stages of the chosen chain that cannot be reached (the opener raises ``Unresponsive``: behind a
partition, frozen) are excluded for the rest of the generation and the next best chain is tried at once.
When no chain is left (``NoChain``) the client hears it at once: 503 with Retry-After, never a hang.

Recovery: when a stage fails (its link breaks, it reports an error, or a decode token is later than the
stall deadline), the generation opens a new session on a chain that avoids the failed node (a replica),
replays the history as a prefill whose last chunk samples the next step, and goes on; the client sees
the same tokens it would have seen, none twice. Failures during recovery are retried with backoff until
``recovery_timeout_s``; then the error reaches the client. ``NoChain`` ends recovery at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from ..errors import InvalidRequest, NoChain, PeerUnavailable, ProtocolError, StepTimeout, SwarmdError, Unresponsive
from ..types import FinishReason, GenerationRequest
from ..wire.messages import Hop
from .audit import SessionAudit
from .entry import OutputMismatch, StageFailed, Token
from .textstream import TextStream

log = logging.getLogger(__name__)


class TokenSource(Protocol):
    """An open ring session as the generation sees it."""

    session_id: str
    chain: list[Hop]
    audit: SessionAudit | None

    async def feed(self, token_ids: Sequence[int], start_pos: int, chunk: int, step: int = 0) -> None: ...
    async def tee_token(self, step: int, token: int) -> None: ...
    async def next_token(self, timeout: float) -> Token: ...
    async def close(self, reason: str) -> None: ...


class Opener(Protocol):
    async def open(self, session_id: str, request: GenerationRequest, seed: int, timeout: float,
                   avoid: frozenset[str] = ..., exclude: frozenset[str] = ...) -> TokenSource: ...
    async def referee(self, sess: Any, step: int, history: Sequence[int], chunk: int,
                      timeout: float) -> str | None: ...


@dataclass
class Recovery:
    """One replay, for the log and the status document."""

    at_step: int
    failed_node: str | None
    reason: str
    seconds: float  # from the failure until the replacement chain was fed
    attempts: int


class Generation:
    """Use as ``async with Generation(...) as g: async for delta in g.stream(): ...``.

    Leaving the block (normally, on error or on cancellation) closes the session on every stage at once.
    """

    def __init__(
        self, opener: Opener, request: GenerationRequest, decode: Callable[[Sequence[int]], str], *,
        prefill_chunk: int = 256, open_timeout_s: float = 10.0, token_timeout_s: float = 120.0,
        stall_timeout_s: float | None = None, step_estimate_s: float | None = None,
        load: Callable[[Sequence[str]], int] | None = None, recovery_timeout_s: float = 0.0,
        on_recovery: Callable[[Recovery], None] | None = None,
    ) -> None:
        self.opener = opener
        self.request = request
        self.session_id = uuid.uuid4().hex
        self.seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        self.history: list[int] = list(request.prompt_ids)
        self.text = TextStream(decode, request.stop)
        self.prefill_chunk = max(1, prefill_chunk)
        self.open_timeout_s = open_timeout_s  # the whole opening, every chain tried
        self.token_timeout_s = token_timeout_s  # cap on the first token after a (re)fed prefill
        self.stall_timeout_s = stall_timeout_s or token_timeout_s  # every later token
        # Expected seconds of one decode step of the chain (gossiped speeds): a prefill of n positions
        # gets stall_timeout_s + n steps' worth for its first token (never more than token_timeout_s), so a
        # chain that silently lost a hop is noticed in seconds, not at the cap. None: the cap alone.
        self.step_estimate_s = step_estimate_s
        # Sessions sharing the chain's busiest stage now (node ids of the chain -> count): a stage serves
        # its sessions in turn, so each one's tokens come that many times slower; a deadline that ignored
        # it would replay healthy sessions of a loaded swarm (and load it further).
        self._load = load
        self.recovery_timeout_s = recovery_timeout_s  # 0: no recovery, a failure ends the generation
        self.finish_reason: FinishReason | None = None
        self.recoveries: list[Recovery] = []
        self._on_recovery = on_recovery
        self.on_token: Callable[[], None] | None = None  # each token released to the client (metrics)
        self._ring: TokenSource | None = None
        self._unreachable: set[str] = set()  # stages that did not accept in time: never tried again

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.history) - len(self.request.prompt_ids)

    async def __aenter__(self) -> Generation:
        self._ring = await self._open_chain(self.session_id, set(), time.monotonic() + self.open_timeout_s)
        self.session_id = self._ring.session_id
        return self

    async def _open_chain(self, session_id: str, avoid: set[str], deadline: float) -> TokenSource:
        """Open ``session_id`` on the best chain. Stages found unreachable (no accept and no pong, or a
        link that broke under the open) are excluded for the rest of the generation and the next chain is
        tried at once, until ``deadline`` or ``NoChain``; a stage's own refusal (e.g. its KV budget) is raised."""
        while True:
            try:
                return await self.opener.open(session_id, self.request, self.seed,
                                              max(0.05, deadline - time.monotonic()),
                                              avoid=frozenset(avoid), exclude=frozenset(self._unreachable))
            except (Unresponsive, PeerUnavailable, StageFailed) as exc:
                gone = exc.nodes if isinstance(exc, Unresponsive) else {exc.failed_node} - {None}
                if not gone or gone <= self._unreachable or time.monotonic() >= deadline:
                    raise
                log.warning("session %s: %s; trying a chain without them", session_id[:8], exc.message)
                self._unreachable |= gone  # type: ignore[arg-type]
            session_id = uuid.uuid4().hex

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            await ring.close("finished" if et is None else "aborted")

    async def stream(self) -> AsyncIterator[str]:
        """Yield text deltas until a stop token, a stop string or ``max_tokens``."""
        assert self._ring is not None, "use 'async with'"
        req = self.request
        fresh = True  # the next token follows a prefill (allowed the longer timeout)
        try:
            await self._ring.feed(req.prompt_ids, 0, self.prefill_chunk)
        except SwarmdError as exc:
            await self._recover(exc, 0)
        for step in range(req.max_tokens):
            while True:
                try:
                    assert self._ring is not None
                    tok = await self._ring.next_token(self._first_token_timeout() if fresh else self._stall_timeout())
                    fresh = False
                    if getattr(self._ring, "audit", None) is not None:
                        await self._verify(self._ring, tok.step, tok.token)
                    break
                except SwarmdError as exc:
                    await self._recover(exc, step)
                    fresh = True
            if tok.step != step:
                raise ProtocolError(f"ring sent step {tok.step} while step {step} was due")
            token = tok.token
            if token in req.stop_token_ids:
                self.finish_reason = FinishReason.STOP
                break
            self.history.append(token)
            if self.on_token is not None:
                self.on_token()
            delta = self.text.push(token)
            if delta:
                yield delta
            if self.text.stopped:
                self.finish_reason = FinishReason.STOP
                break
        else:
            self.finish_reason = FinishReason.LENGTH
        tail = self.text.flush()
        if tail:
            yield tail

    async def _verify(self, ring: TokenSource, step: int, token: int) -> None:
        """Hold the token of an audited session until its check passed: the token compared is the one
        released. A failed check goes to a referee; when the audited stage was wrong, raise
        ``OutputMismatch`` (the session is replayed without it)."""
        audit = ring.audit
        assert audit is not None
        audit.token(step, token)
        # The shadow also runs the prompt for step 0: it gets the prefill's allowance.
        verdict = await audit.outcome(step, self._first_token_timeout() if step == 0 else self._stall_timeout())
        auditor = getattr(self.opener, "auditor", None)
        if verdict is None:
            log.info("session %s: check given up (%s)", self.session_id[:8], audit.abandoned)
            ring.audit = None
            if auditor is not None:
                auditor.stats.abandoned += 1
            return
        if auditor is not None:
            auditor.stats.steps += 1
        if verdict:
            if auditor is not None:
                auditor.passed_step(audit.audited.node_id, audit.plan.verifier.node_id)
            await ring.tee_token(step, token)
            return
        if auditor is not None:
            auditor.stats.mismatches += 1
        log.warning("session %s: %s and its shadow %s disagree at step %d; asking a third replica",
                    self.session_id[:8], audit.audited.node_id, audit.plan.verifier.node_id, step)
        wrong = await self.opener.referee(ring, step, self.history, self.prefill_chunk, self.token_timeout_s)
        ring.audit = None  # one verdict per session; the replay (if any) is a new session
        if wrong == audit.plan.verifier.node_id:
            return  # the stage was right: its token goes out
        # The stage was wrong, or nobody could tell: the disputed token is never released; the session is
        # replayed on a chain without the audited stage (quarantined only in the first case).
        err = OutputMismatch(f"node {audit.audited.node_id}'s output at step {step} "
                             + ("was wrong" if wrong else "was disputed and could not be settled"))
        err.failed_node = audit.audited.node_id
        raise err

    def _sharing(self) -> int:
        if self._load is None or self._ring is None:
            return 1
        return max(1, self._load([h.node_id for h in self._ring.chain]))

    def _stall_timeout(self) -> float:
        """A decode token is late past ``stall_timeout_s`` or 20 expected steps of the chain, times the
        sessions sharing its busiest stage, whichever is longer (never past ``token_timeout_s``)."""
        if self.step_estimate_s is None:
            return self.stall_timeout_s
        return min(self.token_timeout_s, max(self.stall_timeout_s, 20 * self.step_estimate_s * self._sharing()))

    def _first_token_timeout(self) -> float:
        if self.step_estimate_s is None:
            return self.token_timeout_s
        return min(self.token_timeout_s,
                   self._stall_timeout() + len(self.history) * self.step_estimate_s * self._sharing())

    async def _recover(self, exc: SwarmdError, step: int) -> None:
        """Replace the failed session: a new chain avoiding the failed node, the history replayed so
        that its last chunk samples ``step``. Raises ``exc`` (or the last error) when recovery is off,
        the error cannot be helped by another chain, or ``recovery_timeout_s`` has passed."""
        if self.recovery_timeout_s <= 0 or isinstance(exc, (InvalidRequest, ProtocolError)):
            raise exc
        started = time.monotonic()
        deadline = started + self.recovery_timeout_s
        old, self._ring = self._ring, None
        avoid = {exc.failed_node} if exc.failed_node else set()
        if isinstance(exc, StepTimeout) and old is not None:  # we cannot tell which stage stalled
            avoid |= {h.node_id for h in old.chain}
        if old is not None:
            asyncio.ensure_future(old.close("replaced"))  # best effort; a dead stage never answers
        log.warning("session %s failed at step %d (%s): replaying %d tokens onto another chain",
                    self.session_id[:8], step, exc.message, len(self.history))
        attempt, delay, last = 0, 0.05, exc
        while True:
            attempt += 1
            try:
                ring = await self._open_chain(uuid.uuid4().hex, avoid, deadline)
                self._ring = ring
                await ring.feed(self.history, 0, self.prefill_chunk, step)
                self.session_id = ring.session_id
                rec = Recovery(step, exc.failed_node, exc.message, time.monotonic() - started, attempt)
                self.recoveries.append(rec)
                if self._on_recovery is not None:
                    self._on_recovery(rec)
                log.info("session replayed onto %s in %.3fs (%d attempt(s))", [h.node_id for h in ring.chain],
                         rec.seconds, attempt)
                return
            except NoChain:
                raise  # no replica holds a span: say so now (placement may load it elsewhere meanwhile)
            except SwarmdError as err:
                last = err
                if err.failed_node:
                    avoid.add(err.failed_node)
                ring_now, self._ring = self._ring, None
                if ring_now is not None:
                    asyncio.ensure_future(ring_now.close("replay failed"))
            if time.monotonic() + delay > deadline:
                raise last
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def run(self) -> str:
        """Generate to the end and return the whole text."""
        return "".join([d async for d in self.stream()])
