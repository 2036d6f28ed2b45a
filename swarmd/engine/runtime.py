"""The engine facade the rest of swarmd talks to: async methods, torch work on one worker thread.

The event loop never runs tensor code. Sessions are keyed by id; each holds KV pages whose bytes
are reserved from a :class:`KVBudget` at open and allocated from the span's pool at its first step.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..config import EngineConfig, ModelConfig
from ..errors import ConfigError, InvalidRequest, StepTimeout, SwarmdError
from ..types import LayerSpan, SamplingParams, TensorBlob, TopLogits
from .batch_policy import next_gap, straggler_deadline, wait_cap
from .kv_budget import KVBudget, Reservation
from .kv_cache import PAGE_TOKENS, KVCache, KVPool
from .loader import load_config, load_tokenizer
from .sampling import sample_batch
from .sources import ModelSource, resolve_source
from .stage import StageModel, check_rows
from .step_plan import Row
from .wire_tensors import IMPLAUSIBLE, MAX_HIDDEN_ABS, NOT_FINITE, blob_to_tensor, tensor_to_blob

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str, int, int], None]

# Logits a last stage reports per checked step (its entry compares the chosen token against them).
REPORT_TOP = 16
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def parse_span(text: str, num_layers: int) -> LayerSpan | None:
    """``auto`` (every layer until placement exists), ``none`` or ``START:END``."""
    if text == "none":
        return None
    if text == "auto":
        return LayerSpan(0, num_layers, num_layers)
    start, sep, end = text.partition(":")
    try:
        return LayerSpan(int(start), int(end), num_layers)
    except ValueError as exc:
        msg = str(exc) if sep else f"--layers must be START:END, auto or none, got {text!r}"
        raise ConfigError(msg) from None


@dataclass
class LoadedModel:
    source: ModelSource
    config: Any
    tokenizer: Any | None
    stage: StageModel | None

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))


def load_meta(model_cfg: ModelConfig, engine_cfg: EngineConfig) -> LoadedModel:
    """Blocking: resolve the source, read config and tokenizer (no weights yet). Run off the loop."""
    if engine_cfg.threads > 0:
        torch.set_num_threads(engine_cfg.threads)
    source = resolve_source(model_cfg.source)
    config = load_config(source, model_cfg.cache_dir)
    tokenizer = load_tokenizer(source, model_cfg.cache_dir)
    return LoadedModel(source, config, tokenizer, None)


def load_stage(
    loaded: LoadedModel, model_cfg: ModelConfig, engine_cfg: EngineConfig, span: LayerSpan,
    progress: Progress | None = None,
) -> StageModel:
    """Blocking: load the weights of ``span`` only. Run off the loop. With ``tensor_parallel`` > 1 the span
    is split over that many devices (``tp_stage.TPStage``: worker processes for ranks 1..N-1)."""
    if engine_cfg.tensor_parallel > 1:
        from .tp_stage import TPStage

        def rank0(cfg: EngineConfig) -> StageModel:
            return load_stage(loaded, model_cfg, dataclasses.replace(cfg, tensor_parallel=1), span, progress)

        return TPStage.start(rank0, model_cfg, engine_cfg, span, engine_cfg.tensor_parallel)  # type: ignore[return-value]
    device = torch.device(engine_cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {engine_cfg.device} requested but CUDA is not available")
    dtype = parse_dtype(engine_cfg.dtype, device)
    if device.type == "cuda":
        # SDPA would pick cuDNN attention, which builds an execution plan per shape on the CPU: every
        # decode step has a new KV length, so it cost 1.9 ms of CPU per layer and step (measured on an H200
        # with Llama-3-8B: 54 ms/token instead of about 20; scripts/profile_stage.py). Flash and
        # memory-efficient attention have no such cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    started = time.monotonic()
    stage = StageModel.load(
        loaded.source, loaded.config, span, device=device, dtype=dtype, cache_root=model_cfg.cache_dir,
        seed=model_cfg.seed,
        progress=(lambda done, total: progress("loading weights", done, total)) if progress else None,
    )
    log.info("loaded %s layers %s on %s (%s, %.1f MB) in %.1fs", loaded.source.name, span, device,
             str(dtype).removeprefix("torch."), stage.parameter_bytes() / 1e6, time.monotonic() - started)
    return stage


def load_model(model_cfg: ModelConfig, engine_cfg: EngineConfig, progress: Progress | None = None) -> LoadedModel:
    """Blocking: everything for a node whose span is given by ``engine_cfg.layers`` (auto = every layer)."""
    loaded = load_meta(model_cfg, engine_cfg)
    span = parse_span(engine_cfg.layers, loaded.num_layers)
    if span is not None:
        loaded.stage = load_stage(loaded, model_cfg, engine_cfg, span, progress)
    return loaded


@dataclass
class _Session:
    pages: int
    reservation: Reservation
    cache: KVCache | None = None  # allocated by the worker thread at the session's first step
    closed: bool = False
    last_done: float = 0.0  # loop time its last step's result was delivered
    gap: float | None = None  # how long its next step usually takes to arrive after that
    finished: bool = False  # its decode loop in the engine ended: no step is due until the ring sends one
    cont: _Continuation | None = None  # its decode loop in the engine, while one runs


@dataclass(eq=False)
class _Continuation:
    """A session decoding inside the engine (``Engine.decode``): each sampled token is its next step's input."""

    prompt_len: int
    stop: frozenset[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    results: asyncio.Queue[tuple[int, int] | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def ends(self, step: int, token: int) -> bool:
        return token in self.stop or step + 1 >= self.max_tokens


@dataclass(eq=False)
class _Step:
    session_id: str
    session: _Session
    tokens: Sequence[int]
    hidden: TensorBlob | None
    start_pos: int
    sampling: tuple[SamplingParams, int, int] | None
    future: asyncio.Future[int | TensorBlob | TopLogits | None]
    report: bool = False  # last span: return the top logits with the token (output verification)
    queued_at: float = 0.0  # loop time it was queued (metrics: queue wait)
    cont: _Continuation | None = None  # results go to the session's decode loop, not to ``future``

    @property
    def tokens_in(self) -> int:
        return len(self.tokens) if self.hidden is None else int(self.hidden.shape[1])


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
        self._pool: KVPool | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmd-engine")
        self._sessions: dict[str, _Session] = {}
        self._queue: collections.deque[_Step] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._last_forward_s = 0.0
        self.batches = 0  # batched forwards run (for status and benchmarks)
        # Called per step with (span, seconds queued, seconds of its batched forward): the node's metrics.
        self.observe: Callable[[tuple[int, int], float, float], None] | None = None
        self.batched_steps = 0
        self._graphs: Any = None  # decode_graph.DecodeGraphs once prepare() built them
        self.graph_steps = 0  # batched forwards whose decode rows replayed a graph

    def prepare(self, static_decode: bool | None = None) -> None:
        """Blocking (run off the loop, before the span serves): allocate the KV pool and, on a GPU, capture
        the decode graphs. ``static_decode`` forces the static decode path on or off (tests run it on a CPU,
        where nothing is captured); None: on for a single-device CUDA span unless ``cuda_graphs`` is off."""
        stage = self.stage
        on_cuda = stage.device.type == "cuda"
        if static_decode is None:
            static_decode = on_cuda and self.cfg.cuda_graphs
        if not static_decode or self._pool is not None:
            return
        from .decode_graph import build_graphs, unsupported_reason

        if unsupported_reason(stage) is not None:
            build_graphs(stage, None, 0, capture=False)  # type: ignore[arg-type]  # logs why
            return
        self._pool = stage.new_pool(self.pages + 1)  # one page more: the graphs' scratch page
        limit = max(1, min(self.cfg.graph_max_batch, self.pages))
        self._graphs = build_graphs(stage, self._pool, limit, capture=on_cuda)

    @property
    def graph_info(self) -> dict[str, object] | None:
        g = self._graphs
        if g is None:
            return None
        return {"batch_sizes": list(g.buckets), "captured": len(g.graphs), "capture_s": round(g.capture_s, 3),
                "memory_bytes": g.graph_bytes, "steps": self.graph_steps}

    async def open_session(self, session_id: str, capacity: int) -> None:
        """Reserve KV pages for ``capacity`` positions; 503-class error when the budget is full."""
        if session_id in self._sessions:
            raise InvalidRequest(f"session {session_id} already exists")
        if capacity < 1:
            raise InvalidRequest("a session needs a capacity of at least one position")
        pages = -(-capacity // PAGE_TOKENS)
        res = await self.budget.reserve(pages * self.page_bytes, self.cfg.kv_wait_s)
        self._sessions[session_id] = _Session(pages, res)

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
        await asyncio.get_running_loop().run_in_executor(self._executor, self._release, sess)
        await self.budget.release(sess.reservation)

    def _release(self, sess: _Session) -> None:
        if sess.cache is not None:
            sess.cache.pool.release(sess.cache)
            sess.cache = None

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
        step = _Step(session_id, sess, tokens, hidden, start_pos, sampling, loop.create_future(), report,
                     loop.time())
        if sess.last_done:
            sess.gap = next_gap(sess.gap, loop.time() - sess.last_done)
        self._enqueue(step)
        try:
            async with asyncio.timeout(self.cfg.step_timeout_s):
                return await asyncio.shield(step.future)
        except TimeoutError:
            raise StepTimeout(f"engine step took longer than {self.cfg.step_timeout_s}s") from None
        finally:
            if step in self._queue:  # cancelled or timed out before its batch: never run it
                self._queue.remove(step)
            if not step.future.done():
                step.future.cancel()

    def _enqueue(self, step: _Step) -> None:
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
        cont = _Continuation(prompt_len, stop, max_tokens, params, seed)
        sess.cont = cont
        self._enqueue(_Step(session_id, sess, tokens, hidden, start_pos, (params, seed, step), loop.create_future(),
                            False, loop.time(), cont))
        try:
            while True:
                try:
                    async with asyncio.timeout(self.cfg.step_timeout_s):
                        item = await cont.results.get()
                except TimeoutError:
                    raise StepTimeout(f"engine step took longer than {self.cfg.step_timeout_s}s") from None
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

    def _continue(self, batch: list[_Step], results: list[Any], now: float) -> None:
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
            self._queue.append(_Step(step.session_id, step.session, (result,), None, cont.prompt_len + n,
                                     (cont.params, cont.seed, n + 1), step.future, False, now, cont))

    def _take_batch(self) -> list[_Step]:
        """The queued steps of the next batch: arrival order, one per session, up to max_batch_tokens
        (a step bigger than that runs alone). A session's later steps wait for the next batch."""
        batch: list[_Step] = []
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

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Step]:
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

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: list[_Step]) -> tuple[list[_Step], Any, float]:
        return batch, loop.run_in_executor(self._executor, self._run_batch, batch), loop.time()

    async def _batch_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        inflight: tuple[list[_Step], Any, float] | None = None
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

    def _deliver(self, batch: list[_Step], results: list[Any], started: float, done: float) -> None:
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

    # --- the worker thread ------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Step]) -> list[Any]:
        """Worker thread: validate each step (a bad one fails alone), run the rest as one forward."""
        stage = self.stage
        results: list[Any] = [None] * len(batch)
        rows: list[Row] = []
        live: list[int] = []
        for i, step in enumerate(batch):
            try:
                rows.append(self._row(step))
                live.append(i)
            except SwarmdError as exc:
                results[i] = exc
        if rows and stage.embed is None:
            rows, live = self._finite_rows(rows, live, results)
        if not rows:
            return results
        outs, by_row = self._forward(rows)
        greedy_ids = None if by_row is None else {live[k]: tok for k, tok in by_row.items()}
        if self.cfg.corrupt_output:  # tests only: a member that computes wrong answers
            outs = [None if out is None else -out for out in outs]
            greedy_ids = None
        if stage.lm_head is None:
            hidden = [out[0] for out in outs if out is not None]
            if any(h.device.type != "cpu" for h in hidden):  # graph rows are on the host already
                hidden = [h.to(stage.device) for h in hidden]
            host = torch.cat(hidden).to("cpu") if len(hidden) > 1 else hidden[0].to("cpu")  # one copy off the GPU
            at = 0
            for i, row in zip(live, rows, strict=True):
                results[i] = tensor_to_blob(host[at: at + row.n].unsqueeze(0))
                at += row.n
            return results
        sampled = [(i, out) for i, out in zip(live, outs, strict=True) if out is not None]
        greedy = [(i, out) for i, out in sampled if batch[i].sampling[0].greedy]  # type: ignore[index]
        if greedy and greedy_ids is not None and all(i in greedy_ids for i, _ in greedy):
            for i, _ in greedy:
                results[i] = greedy_ids[i]
        elif greedy:
            tokens = torch.stack([out for _, out in greedy]).argmax(-1).tolist()
            for (i, _), tok in zip(greedy, tokens, strict=True):
                results[i] = int(tok)
        drawn = [(i, out) for i, out in sampled if results[i] is None]
        if drawn:  # the whole batch's draws at once on the device, one copy of the ids back
            tokens = sample_batch(torch.stack([out for _, out in drawn]), [batch[i].sampling for i, _ in drawn])  # type: ignore[misc]
            for (i, _), tok in zip(drawn, tokens, strict=True):
                results[i] = tok
        for i, out in sampled:
            if batch[i].report:
                top = torch.topk(out, min(REPORT_TOP, int(out.shape[-1])))
                results[i] = TopLogits(int(results[i]), tuple(int(t) for t in top.indices.tolist()),
                                       tuple(float(v) for v in top.values.tolist()))
        return results

    def _forward(self, rows: list[Row]) -> tuple[list[Any], dict[int, int] | None]:
        """The batch's forward: decode rows replay a graph where one fits, the rest run eagerly. Returns the
        per-row outputs (as ``StageModel.forward_batch``) and, from a graph on the last span, the greedy
        token of each decode row that asked for logits (None where no graph ran)."""
        graphs = self._graphs
        decode = [j for j, r in enumerate(rows) if r.n == 1]
        if graphs is None or not decode or not graphs.fits([rows[j] for j in decode]):
            return self.stage.forward_batch(rows), None
        check_rows(rows)
        out, ids = graphs.run([rows[j] for j in decode])
        self.graph_steps += 1
        outs: list[Any] = [None] * len(rows)
        greedy: dict[int, int] = {}
        picked = ids.tolist() if ids is not None else []  # one small copy off the device
        for k, j in enumerate(decode):
            if ids is None:
                outs[j] = out[k: k + 1].unsqueeze(0)  # [1, 1, D]
            elif rows[j].logits:
                outs[j] = out[k]
                greedy[j] = int(picked[k])
        rest = [j for j, r in enumerate(rows) if r.n != 1]
        if rest:
            for j, o in zip(rest, self.stage.forward_batch([rows[j] for j in rest]), strict=True):
                outs[j] = o
        return outs, greedy

    def _finite_rows(self, rows: list[Row], live: list[int], results: list[Any]) -> tuple[list[Row], list[int]]:
        """Move the batch's hidden states to the device in one copy and drop rows holding NaN, Inf or
        values beyond ``MAX_HIDDEN_ABS`` (NaN fails the comparison too: one pass, one sync)."""
        flat = (torch.cat([r.x for r in rows]) if len(rows) > 1 else rows[0].x).to(self.stage.device)
        sane = flat.abs() <= MAX_HIDDEN_ABS
        bad = set((~sane.all(dim=-1)).nonzero().flatten().tolist())  # token indices
        kept_rows, kept = [], []
        at = 0
        for i, row in zip(live, rows, strict=True):
            if bad.intersection(range(at, at + row.n)):
                nonfinite = not bool(torch.isfinite(flat[at: at + row.n]).all())
                results[i] = InvalidRequest(NOT_FINITE if nonfinite else IMPLAUSIBLE)
            else:
                kept_rows.append(Row(flat[at: at + row.n], row.start_pos, row.cache, row.logits))
                kept.append(i)
            at += row.n
        return kept_rows, kept

    def _row(self, step: _Step) -> Row:
        stage = self.stage
        sess = step.session
        if sess.closed:
            raise InvalidRequest(f"session {step.session_id} closed")
        if sess.cache is None:
            if self._pool is None:
                self._pool = stage.new_pool(self.pages)
            sess.cache = self._pool.allocate(sess.pages * PAGE_TOKENS)
        if stage.embed is not None:
            if step.hidden is not None or not step.tokens:
                raise InvalidRequest("the first stage takes token ids, not hidden states")
            if any(not 0 <= t < stage.vocab_size for t in step.tokens):
                raise InvalidRequest("token id outside the vocabulary")
            x = torch.tensor(list(step.tokens), dtype=torch.long)
        else:
            if step.hidden is None or step.tokens:
                raise InvalidRequest(f"stage {stage.span} takes hidden states, not token ids")
            x = blob_to_tensor(step.hidden, stage.hidden_size, check_finite=False)[0]
        sess.cache.check_step(step.start_pos, int(x.shape[0]))
        return Row(x, step.start_pos, sess.cache, logits=step.sampling is not None)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        for sid in list(self._sessions):
            await self.close_session(sid)
        self._executor.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self.stage.close)  # a tensor-parallel span stops its worker processes
