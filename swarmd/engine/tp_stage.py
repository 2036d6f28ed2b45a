"""A span run with tensor parallelism over several devices of one node, seen by the engine as one stage.

Rank 0 is the node's engine: ``TPStage`` wraps its (sharded) ``StageModel`` and has the same interface.
Ranks 1..N-1 are child processes (``spawn``) that ``TPStage.start`` creates, one per device; each loads
the span, keeps its shard and mirrors rank 0's KV pool page for page. Before every batched forward rank 0
sends the step's rows (cache pages, positions, lengths; token ids when the span embeds) over a pipe as
JSON (local IPC between our own processes; msgpack stays the wire codec's) and hidden-state inputs by a
broadcast; then every rank runs the same forward and the ranks meet at each layer's all-reduces. Workers
compute no logits: rank 0 holds the whole LM head.

A worker that dies cannot be waited out (a collective would block for ever): ``dead()`` reports it and
the node leaves the swarm and exits (node.py), so its spans fail over to replicas.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from ..config import EngineConfig, ModelConfig
from ..errors import ConfigError
from ..types import LayerSpan
from .kv_cache import PAGE_TOKENS, KVCache, KVPool
from .stage import AttentionShape, StageModel, check_rows
from .step_plan import Row
from .tensor_parallel import (
    SAFE_NCCL_ENV,
    Group,
    check_divisible,
    connect_store,
    layer_plan,
    make_store,
    safe_nccl_environment,
    shard_layer,
)

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 600.0  # every rank loads its span before the group forms: a large model takes minutes


def _pack(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def rank_devices(device: str, world: int) -> list[str]:
    """``cuda`` or ``cuda:N`` → N, N+1, … (one per rank); ``cpu`` → cpu for every rank (tests)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["cpu"] * world
    first = dev.index or 0
    if torch.cuda.is_available() and first + world > torch.cuda.device_count():
        raise ConfigError(f"--tensor-parallel {world} from {device} needs {first + world} GPUs; "
                          f"this machine has {torch.cuda.device_count()}")
    return [f"cuda:{first + r}" for r in range(world)]


def shard_stage(stage: StageModel, group: Group) -> None:
    """Keep this rank's shard of every layer; the stage's attention shape becomes the local one."""
    check_divisible(stage.config, group.world)
    plan = layer_plan(stage.config)
    for layer in stage.layers:
        shard_layer(layer, plan, group)
    s = stage.shape
    stage.shape = AttentionShape(s.num_heads // group.world, s.num_kv_heads // group.world, s.head_dim)
    if stage.device.type == "cuda":
        torch.cuda.empty_cache()


class MirroredPool(KVPool):
    """Rank 0's pool: caches get an id the workers know them by; releases are told at the next step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next = 0
        self.released: list[int] = []

    def allocate(self, capacity: int) -> KVCache:
        cache = super().allocate(capacity)
        self._next += 1
        cache.ident = self._next  # type: ignore[attr-defined]
        return cache

    def release(self, cache: KVCache) -> None:
        ident = getattr(cache, "ident", None)
        if cache.pool is self and cache.pages and ident is not None:
            self.released.append(ident)
        super().release(cache)


def adopt(pool: KVPool, pages: list[int]) -> KVCache:
    """A worker's cache on exactly the pages rank 0 chose (zeroed, as ``allocate`` does)."""
    taken = set(pages)
    pool._free = [p for p in pool._free if p not in taken]  # noqa: SLF001
    index = torch.tensor(pages, dtype=torch.long, device=pool.device)
    pool.k[:, index] = 0
    pool.v[:, index] = 0
    return KVCache(pool, list(pages), index)


class TPStage:
    """Rank 0 of a tensor-parallel span; everything not overridden is the local ``StageModel``'s."""

    def __init__(self, inner: StageModel, group: Group, procs: list[Any], conns: list[Connection]) -> None:
        self.inner = inner
        self.group = group
        self.procs = procs
        self.conns = conns
        self.pool: MirroredPool | None = None
        self.broken = ""  # why the ranks can no longer be trusted to be in step (reported by dead())
        self._store: Any = None  # the rendezvous, kept as long as the group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # --- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def start(cls, load: Any, model_cfg: ModelConfig, engine_cfg: EngineConfig, span: LayerSpan,
              world: int) -> TPStage:
        """Blocking: start ranks 1..world-1, load rank 0's span with ``load(engine_cfg)``, form the group."""
        safe_nccl_environment()
        devices = rank_devices(engine_cfg.device, world)
        store = make_store(world, JOIN_TIMEOUT_S)
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        for rank in range(1, world):
            parent, child = ctx.Pipe()
            cfg = dataclasses.replace(engine_cfg, device=devices[rank], tensor_parallel=1)
            p = ctx.Process(target=worker_main, name=f"swarmd-tp{rank}", daemon=True,
                            args=(child, store.port, rank, world, model_cfg, cfg, (span.start, span.end)))
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        try:
            inner = load(dataclasses.replace(engine_cfg, device=devices[0]))
            for conn, proc in zip(conns, procs, strict=True):  # each worker says it loaded (or why not)
                deadline = time.monotonic() + JOIN_TIMEOUT_S
                while not conn.poll(0.5):
                    if not proc.is_alive() or time.monotonic() > deadline:
                        raise ConfigError(f"tensor-parallel worker {proc.name} did not load its span "
                                          f"(exit code {proc.exitcode})")
                msg = json.loads(conn.recv_bytes())
                if msg.get("error"):
                    raise ConfigError(f"tensor-parallel worker {proc.name} failed: {msg['error']}")
            group = Group.join(store, 0, world, torch.device(devices[0]), engine_cfg.step_timeout_s)
            shard_stage(inner, group)
        except BaseException:
            for p in procs:
                p.kill()
            raise
        log.info("span %s: tensor parallel over %s", span, ", ".join(devices))
        stage = cls(inner, group, procs, conns)
        stage._store = store  # noqa: SLF001
        return stage

    def dead(self) -> list[str]:
        """Workers that exited, or ranks out of step (the node cannot go on with this span)."""
        lost = [f"{p.name} (exit {p.exitcode})" for p in self.procs if not p.is_alive()]
        return lost + ([f"rank 0 ({self.broken})"] if self.broken else [])

    @property
    def samples(self) -> bool:
        return self.inner.lm_head is not None

    def kill_workers(self) -> None:
        for p in self.procs:
            p.kill()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send_bytes(_pack({"op": "stop"}))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():  # stuck in a collective (rank 0 broke off a step): it cannot stop by itself
                p.kill()
                p.join(5)

    # --- what the engine calls ----------------------------------------------------------------------

    def parameter_bytes(self) -> int:
        return self.inner.parameter_bytes() * self.group.world  # every device holds its shard (and the rest)

    def kv_bytes_per_token(self) -> int:
        return self.inner.kv_bytes_per_token() * self.group.world

    def new_pool(self, pages: int, page_tokens: int = PAGE_TOKENS) -> KVPool:
        s = self.inner
        self.pool = MirroredPool(s.span.count, s.shape.num_kv_heads, s.shape.head_dim, pages, s.dtype, s.device,
                                 page_tokens)
        self._send({"op": "pool", "pages": pages, "page_tokens": page_tokens})
        return self.pool

    def forward_batch(self, rows: list[Row]) -> list[torch.Tensor | None]:
        if not rows:
            return []
        # Every check that can refuse the step runs before the workers hear of it: once they have, the
        # ranks must run the forward together.
        check_rows(rows)
        freed: list[int] = []
        if self.pool is not None:
            freed, self.pool.released = self.pool.released, []
        desc: dict[str, Any] = {
            "op": "step", "free": freed,
            "rows": [[r.cache.ident, r.cache.pages, r.start_pos, r.n] for r in rows],  # type: ignore[attr-defined]
        }
        x = None
        if self.inner.embed is not None:
            desc["ids"] = [int(t) for r in rows for t in r.x.tolist()]
        else:
            x = torch.cat([r.x for r in rows]) if len(rows) > 1 else rows[0].x
            x = x.to(device=self.inner.device, dtype=self.inner.dtype).contiguous()
        self._send(desc)
        try:  # the workers run this step now: rank 0 must too, or the ranks are out of step for good
            if x is not None:
                self.group.broadcast(x)
                sliced, at = [], 0
                for r in rows:
                    sliced.append(Row(x[at: at + r.n], r.start_pos, r.cache, r.logits))
                    at += r.n
                rows = sliced
            return self.inner.forward_batch(rows)
        except BaseException as exc:
            self.broken = f"{type(exc).__name__}: {exc}"[:300]
            raise

    def forward(self, inputs: torch.Tensor, start_pos: int, cache: KVCache) -> torch.Tensor:
        """One step of one session (tools and tests), through every rank."""
        out = self.forward_batch([Row(inputs[0], start_pos, cache)])[0]
        assert out is not None
        return out.unsqueeze(0) if self.inner.lm_head is not None else out

    def new_cache(self, capacity: int) -> KVCache:
        return self.new_pool(-(-capacity // PAGE_TOKENS)).allocate(capacity)

    def _send(self, msg: dict[str, Any]) -> None:
        body = _pack(msg)
        for conn in self.conns:
            conn.send_bytes(body)


def _die_with_parent() -> None:
    """A worker never outlives rank 0 (kill -9 included), and leaves signals to it: Ctrl-C or SIGTERM reach
    the daemon, which drains and then stops its workers."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:  # rank 0 died before the prctl
        os._exit(1)


def worker_main(conn: Connection, port: int, rank: int, world: int, model_cfg: ModelConfig,
                engine_cfg: EngineConfig, span: tuple[int, int]) -> None:
    """Ranks 1..N-1: load, shard, then mirror rank 0's steps until told to stop (or the pipe closes)."""
    os.environ.update(SAFE_NCCL_ENV)
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s tp{rank}: %(message)s")
    from .loading import load_meta, load_stage

    try:
        if engine_cfg.threads > 0:
            torch.set_num_threads(engine_cfg.threads)
        elif engine_cfg.device.startswith("cuda"):
            # A GPU rank's CPU work is launching kernels: a pool of intra-op threads per rank only contends
            # (8B decode, TP=2 on two H200s: 44 ms/token with torch's default, 30.5 with one thread).
            torch.set_num_threads(1)
        loaded = load_meta(model_cfg, engine_cfg)
        stage = load_stage(loaded, model_cfg, engine_cfg, LayerSpan(span[0], span[1], loaded.num_layers))
    except Exception as exc:  # noqa: BLE001 - told to rank 0, which fails the load
        conn.send_bytes(_pack({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    conn.send_bytes(_pack({"ok": True}))
    group = Group.join(connect_store(port, world, JOIN_TIMEOUT_S), rank, world, stage.device,
                       engine_cfg.step_timeout_s)
    shard_stage(stage, group)
    pool: KVPool | None = None
    caches: dict[int, KVCache] = {}
    started = time.monotonic()
    with torch.inference_mode():
        while True:
            try:
                msg = json.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return  # rank 0 went away
            if msg["op"] == "stop":
                return
            if msg["op"] == "pool":
                pool = stage.new_pool(msg["pages"], msg["page_tokens"])
                caches.clear()
                continue
            assert pool is not None, "a step before the pool"
            for ident in msg["free"]:
                cache = caches.pop(ident, None)
                if cache is not None:
                    pool.release(cache)
            rows_in = msg["rows"]
            for ident, pages, _start, _n in rows_in:
                if ident not in caches:
                    caches[ident] = adopt(pool, pages)
            total = sum(n for *_, n in rows_in)
            if stage.embed is not None:
                flat = torch.tensor(msg["ids"], dtype=torch.long)
            else:
                flat = group.broadcast(torch.empty((total, stage.hidden_size), dtype=stage.dtype,
                                                   device=stage.device))
            at, rows = 0, []
            for ident, _pages, start, n in rows_in:
                rows.append(Row(flat[at: at + n], start, caches[ident], logits=False))
                at += n
            try:
                stage.forward_batch(rows)
            except Exception:  # rank 0 checked the step; a failure here is a bug or a broken device
                log.exception("tensor-parallel step failed on rank %d; exiting", rank)
                raise
    log.info("worker %d stopped after %.0fs", rank, time.monotonic() - started)
