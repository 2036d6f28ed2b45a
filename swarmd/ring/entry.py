"""The entry side of ring sessions: open a chain, feed the prompt, receive the tokens.

Any node can be an entry, even one without layers: it needs only the tokenizer. The entry keeps each
session's token history (in :class:`~swarmd.ring.generation.Generation`) for replay after a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..errors import CapacityError, KVBudgetExceeded, NoChain, PeerUnavailable, StepTimeout, SwarmdError, Unresponsive
from ..types import GenerationRequest
from ..wire.messages import Forward, Hop, Message, SessionAccepted, SessionClose, SessionError, SessionOpen, TokenOut

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[None]]  # (hop, *messages)
CLOSE_WAIT_S = 0.25  # SessionClose to a stage whose link is not up is given up after this
# (nodes to avoid where another chain exists, nodes to exclude outright) -> the best chain, or None
Planner = Callable[[frozenset[str], frozenset[str]], list[Hop] | None]


class StageFailed(SwarmdError):
    status = 502
    code = "stage_failed"


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

        async def open_hop(i: int, hop: Hop) -> None:
            msg = SessionOpen(self.session_id, e.self_hop, tuple(self.chain), i,
                              len(req.prompt_ids) + req.max_tokens, len(req.prompt_ids), req.max_tokens,
                              sp.temperature, sp.top_p, sp.top_k, self.seed, tuple(sorted(req.stop_token_ids)))
            try:
                await e.send(hop, msg)
            except PeerUnavailable as exc:
                exc.failed_node = hop.node_id
                raise
            e.nudge(hop.node_id)
            await self.pending[hop.node_id]

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
            try:
                await self.entry.send(first, Forward(self.session_id, pos, step, last, part, None))
            except PeerUnavailable as exc:
                exc.failed_node = first.node_id
                raise
            pos += n

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

        sends = [asyncio.ensure_future(close_hop(hop)) for hop in self.chain]
        _, late = await asyncio.wait(sends, timeout=CLOSE_WAIT_S)
        for task in late:
            task.cancel()


class RingEntry:
    """Owns the sessions this node is the entry of, and routes the replies to them."""

    def __init__(self, self_hop: Hop, send: Send, planner: Planner, *, accept_timeout_s: float = 0.5,
                 answered_since: Callable[[str, float], bool] = lambda node_id, since: True,
                 nudge: Callable[[str], None] = lambda node_id: None) -> None:
        self.self_hop = self_hop
        self.send = send
        self.planner = planner
        self.accept_timeout_s = accept_timeout_s  # a stage silent this long while opening is unreachable
        self.answered_since = answered_since  # (node id, since) -> it answered a ping since then
        self.nudge = nudge  # ping a node's link now
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
        self.sessions[session_id] = sess
        try:
            await sess.open(timeout)
        except BaseException:
            await sess.close("open failed")
            raise
        return sess

    def handle(self, msg: Message, sender: str) -> None:
        sess = self.sessions.get(getattr(msg, "session_id", ""))
        if sess is None:
            return
        if isinstance(msg, TokenOut):
            if sender != sess.chain[-1].node_id:
                log.warning("token for %s from %s, not the last stage: dropped", sess.session_id[:8], sender)
                return
            sess.inbox.put_nowait(Token(msg.step, msg.token, msg.done))
        elif isinstance(msg, SessionAccepted):
            fut = sess.pending.get(sender)
            if fut is not None and not fut.done() and msg.node_id == sender:
                fut.set_result(None)
        elif isinstance(msg, SessionError):
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
            if any(h.node_id == node_id for h in sess.chain):
                err = StageFailed(f"lost the connection to stage {node_id}")
                err.failed_node = node_id
                for fut in sess.pending.values():
                    if not fut.done():
                        fut.set_exception(err)
                sess.inbox.put_nowait(err)
