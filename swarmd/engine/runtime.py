"""The engine facade the rest of swarmd talks to: async methods, torch work on one worker thread.

The event loop never runs tensor code. Sessions are keyed by id; each holds KV pages whose bytes
are reserved from a :class:`KVBudget` at open and allocated from the span's pool at its first step.
The batcher (owned here) decides when a batch runs; ``step_runner.StepRunner`` runs it on the thread.
Loading lives in ``loading.py`` (re-exported here for the callers that know it from this module).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..config import EngineConfig
from ..errors import InvalidRequest, StepTimeout
from ..types import SamplingParams, TensorBlob, TopLogits
from .batch_items import Continuation, Session, Step
from .batch_policy import next_gap, straggler_deadline, wait_cap
from .kv_budget import KVBudget
from .kv_cache import PAGE_TOKENS, KVPool
from .loading import LoadedModel, load_meta, load_model, load_stage, parse_dtype, parse_span
from .stage import StageModel
from .step_runner import StepRunner

__all__ = ["Engine", "LoadedModel", "load_meta", "load_model", "load_stage", "parse_dtype", "parse_span"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    """Runs steps of many sessions on one span: continuous batching.

    Steps are queued as they arrive; one batcher task (owned here) hands everything queued to the
    worker thread as one batched forward (at most one step per session, up to ``max_batch_tokens``)
    and resolves each step's future. Sessions join and leave the batch at any step. KV memory is
    pages of one pool; a session's pages are reserved at open (503-class error when full)."""

    def __init__(self, stage: StageModel, cfg: EngineConfig, kv_budget_bytes: int) -> None:
        self.stage = stage
        self.cfg = cfg
        self.kv_per_token = stage.kv_bytes_per_token()
        self.page_bytes = PAGE_TOKENS * self.kv_per_token
        self.pages = max(0, kv_budget_bytes // self.page_bytes)
        self.budget = KVBudget(self.pages * self.page_bytes)
        self.max_batch_tokens = max(1, cfg.max_batch_tokens)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmd-engine")
        self._sessions: dict[str, Session] = {}
        self._queue: collections.deque[Step] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._last_forward_s = 0.0
        self.batches = 0  # batched forwards run (for status and benchmarks)
        # Called per step with (span, seconds queued, seconds of its batched forward): the node's metrics.
        self.observe: Callable[[tuple[int, int], float, float], None] | None = None
        self.batched_steps = 0
        self.runner = StepRunner(stage, cfg, self.pages)  # the worker thread's side

    def prepare(self, static_decode: bool | None = None) -> None:
        """Blocking (run off the loop, before the span serves): the KV pool and, on a GPU, the decode graphs
        (``StepRunner.prepare``)."""
        self.runner.prepare(static_decode)

    @property
    def graph_info(self) -> dict[str, object] | None:
        return self.runner.graph_info

    @property
    def graph_steps(self) -> int:
        return self.runner.graph_steps

    @property
    def _pool(self) -> KVPool | None:  # tests and tools look at the pool
        return self.runner.pool

    @property
    def _graphs(self) -> Any:
        return self.runner._graphs

    async def open_session(self, session_id: str, capacity: int) -> None:
        """Reserve KV pages for ``capacity`` positions; 503-class error when the budget is full."""
        if session_id in self._sessions:
            raise InvalidRequest(f"session {session_id} already exists")
        if capacity < 1:
            raise InvalidRequest("a session needs a capacity of at least one position")
        pages = -(-capacity // PAGE_TOKENS)
        res = await self.budget.reserve(pages * self.page_bytes, self.cfg.kv_wait_s)
        self._sessions[session_id] = Session(pages, res)

    async def close_session(self, session_id: str) -> None:
        sess = self._sessions.pop(session_id, None)
        if sess is None:
            return
        for step in [s for s in self._queue if s.session is sess]:
            self._queue.remove(step)
            if step.cont is None and not step.future.done():
                step.future.set_exception(InvalidRequest(f"session {session_id} closed"))
        if sess.cont is not None and not sess.cont.cancelled:  # its decode loop ends (even with a step in flight)
            sess.cont.results.put_nowait(InvalidRequest(f"session {session_id} closed"))
        sess.closed = True
        # Through the worker, after any batch that holds the session: it may still write these pages.
        await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.release, sess)
        await self.budget.release(sess.reservation)

    async def forward(
        self, session_id: str, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
        sampling: tuple[SamplingParams, int, int] | None, report: bool = False,
    ) -> int | TensorBlob | TopLogits | None:
        """One step with wire-format inputs and outputs (what a ring stage does).

        Returns the sampled token (last span, ``sampling`` given; with ``report``, the token and the top
        logits), hidden states to forward (not last), or None (last span, a prefill chunk that samples nothing).
        """
        sess = self._sessions.get(session_id)
        if sess is None:
            raise InvalidRequest(f"unknown session {session_id}")
        loop = asyncio.get_running_loop()
        step = Step(session_id, sess, tokens, hidden, start_pos, sampling, loop.create_future(), report,
                     loop.time())
        if sess.last_done:
            sess.gap = next_gap(sess.gap, loop.time() - sess.last_done)
        self._enqueue(step)
        try:
            return await self._within_step_timeout(asyncio.shield(step.future))
        finally:
            if step in self._queue:  # cancelled or timed out before its batch: never run it
                self._queue.remove(step)
            if not step.future.done():
                step.future.cancel()

    async def _within_step_timeout(self, aw: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.cfg.step_timeout_s):
                return await aw
        except TimeoutError:
            raise StepTimeout(f"engine step took longer than {self.cfg.step_timeout_s}s") from None

    def _enqueue(self, step: Step) -> None:
        step.session.finished = False
        self._queue.append(step)
        if self._batcher is None:
            self._wake = asyncio.Event()
            self._batcher = asyncio.create_task(self._batch_loop(), name="engine-batcher")
        assert self._wake is not None
        self._wake.set()

    async def decode(
        self, session_id: str, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
        params: SamplingParams, seed: int, step: int, *, prompt_len: int, stop: frozenset[int], max_tokens: int,
    ) -> AsyncIterator[tuple[int, int]]:
        """A sampled step (last span), then the session's decode loop inside the engine: each token is the
        next step's input (at position ``prompt_len + step``) until a stop token or ``max_tokens``. Yields
        (step, token). The batcher queues a session's next step as soon as a batch ends and starts the next
        batch before it hands the results to the event loop, so the loop's per-token work (streaming, the
        API) overlaps the next forward instead of delaying it. For a span that is the whole ring."""
        sess = self._sessions.get(session_id)
        if sess is None:
            raise InvalidRequest(f"unknown session {session_id}")
        loop = asyncio.get_running_loop()
        cont = Continuation(prompt_len, stop, max_tokens, params, seed)
        sess.cont = cont
        self._enqueue(Step(session_id, sess, tokens, hidden, start_pos, (params, seed, step), loop.create_future(),
                            False, loop.time(), cont))
        try:
            while True:
                item = await self._within_step_timeout(cont.results.get())
                if isinstance(item, BaseException):
                    raise item
                yield item
                if cont.ends(*item):
                    return
        finally:
            cont.cancelled = True
            for queued in [q for q in self._queue if q.cont is cont]:
                self._queue.remove(queued)
            if not any(q.session is sess for q in self._queue):
                sess.finished = True  # not due back: nobody waits for it
            if sess.cont is cont:
                sess.cont = None

    def _continue(self, batch: list[Step], results: list[Any], now: float) -> None:
        """Queue the next step of every session decoding in the engine whose token does not end it."""
        for step, result in zip(batch, results, strict=True):
            cont = step.cont
            if cont is None or not isinstance(result, int) or cont.cancelled or step.session.closed:
                continue
            assert step.sampling is not None
            n = step.sampling[2]
            if cont.ends(n, result):
                step.session.finished = True
                continue
            self._queue.append(Step(step.session_id, step.session, (result,), None, cont.prompt_len + n,
                                     (cont.params, cont.seed, n + 1), step.future, False, now, cont))

    def _take_batch(self) -> list[Step]:
        """The queued steps of the next batch: arrival order, one per session, up to max_batch_tokens
        (a step bigger than that runs alone). A session's later steps wait for the next batch."""
        batch: list[Step] = []
        seen: set[int] = set()
        tokens = 0
        for step in list(self._queue):
            if id(step.session) in seen:
                continue
            seen.add(id(step.session))
            if batch and tokens + step.tokens_in > self.max_batch_tokens:
                continue
            batch.append(step)
            tokens += step.tokens_in
            self._queue.remove(step)
        return batch

    def _straggler_deadline(self, now: float) -> float | None:
        if sum(s.tokens_in for s in self._queue) >= self.max_batch_tokens:
            return None
        queued = {id(s.session) for s in self._queue}
        idle = [(s.last_done, s.gap) for s in self._sessions.values()
                if s.gap is not None and not s.closed and not s.finished and id(s) not in queued]
        return straggler_deadline(now, idle, self._last_forward_s)

    async def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let a burst of arriving steps land before taking a batch: the results of a whole batch upstream
        arrive as back-to-back frames that the event loop dispatches one by one. Yields until two loop
        turns add nothing (bounded by the straggler cap)."""
        until = loop.time() + wait_cap(self._last_forward_s)
        seen, quiet = len(self._queue), 0
        while quiet < 2 and loop.time() < until:
            if self._all_queued():  # nobody left to wait for: go now, the rest of the loop's work overlaps
                return
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == seen else 0
            seen = len(self._queue)

    def _all_queued(self) -> bool:
        live = sum(not s.closed and not s.finished for s in self._sessions.values())
        return len({id(s.session) for s in self._queue}) >= live

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[Step]:
        """The next batch, after letting a burst land and waiting (briefly) for sessions due back."""
        assert self._wake is not None
        if len(self._sessions) > 1:  # a lone session never waits
            await self._settle(loop)
        deadline = self._straggler_deadline(loop.time())
        while deadline is not None and deadline > loop.time():
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                break
            deadline = self._straggler_deadline(loop.time())
        return self._take_batch()

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: list[Step]) -> tuple[list[Step], Any, float]:
        return batch, loop.run_in_executor(self._executor, self.runner.run_batch, batch), loop.time()

    async def _batch_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        inflight: tuple[list[Step], Any, float] | None = None
        while True:
            if inflight is None:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = await self._gather(loop)
                if not batch:
                    continue
                inflight = self._launch(loop, batch)
            batch, running, started = inflight
            inflight = None
            try:
                results = await running
            except BaseException as exc:  # noqa: BLE001 - a failed batch fails its steps, not the loop
                if isinstance(exc, asyncio.CancelledError):
                    for step in batch:
                        step.future.cancel()
                    raise
                results = [exc] * len(batch)
            done = loop.time()
            self._last_forward_s = done - started
            self.batches += 1
            self.batched_steps += len(batch)
            self._continue(batch, results, done)
            if self._queue and self._all_queued():  # the device goes on while the results are handed out
                inflight = self._launch(loop, self._take_batch())
            self._deliver(batch, results, started, done)

    def _deliver(self, batch: list[Step], results: list[Any], started: float, done: float) -> None:
        if self.observe is not None:
            span = (self.stage.span.start, self.stage.span.end)
            try:
                for step in batch:
                    self.observe(span, started - step.queued_at, done - started)
            except Exception:  # noqa: BLE001 - metrics never stop the batch loop
                log.exception("engine step observer failed")
        for step, result in zip(batch, results, strict=True):
            step.session.last_done = done
            if step.cont is not None:
                if not step.cont.cancelled:
                    if isinstance(result, BaseException):
                        step.cont.results.put_nowait(result)
                    else:
                        assert step.sampling is not None
                        step.cont.results.put_nowait((step.sampling[2], int(result)))
                continue
            if step.future.done():
                continue
            if isinstance(result, BaseException):
                step.future.set_exception(result)
            else:
                step.future.set_result(result)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        for sid in list(self._sessions):
            await self.close_session(sid)
        self._executor.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self.stage.close)  # a tensor-parallel span stops its worker processes
