"""The composition root: builds engine, stage service, ring entry, mesh and API; owns their lifetimes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from typing import Any

from . import __version__
from .api.app import ApiServer, build_app
from .config import NodeConfig, parse_hostport
from .errors import CapacityError, ConfigError, NotReady
from .ring.entry import RingEntry
from .ring.generation import Generation
from .ring.router import Holder, coverage, even_split, plan_chain
from .ring.stage_service import StageService
from .sdnotify import Notifier
from .transport.mesh import Mesh
from .types import GenerationRequest, LayerSpan, NodeState
from .wire.crypto import Keyring
from .wire.messages import Forward, Hello, Hop, Message, SessionClose, SessionError, SessionOpen

log = logging.getLogger(__name__)

STAGE_MESSAGES = (SessionOpen, Forward, SessionClose)


def default_node_id() -> str:
    return f"{socket.gethostname()[:40]}-{secrets.token_hex(3)}"


def resolve_span(layers: str, num_layers: int, listen: str, peers: tuple[str, ...]) -> LayerSpan | None:
    """``START:END``, ``none``, or ``auto``: every layer alone, an even share among static peers."""
    if layers == "none":
        return None
    if layers != "auto":
        from .engine.runtime import parse_span

        return parse_span(layers, num_layers)
    if not peers:
        return LayerSpan(0, num_layers, num_layers)
    host, port = parse_hostport(listen)
    if port == 0:
        raise ConfigError("--layers auto with --peer needs a fixed --listen port (or give --layers START:END)")
    members = sorted({listen, *peers})
    if len(members) > num_layers:
        raise ConfigError(f"{len(members)} nodes cannot share {num_layers} layers evenly; give --layers START:END")
    start, end = even_split(num_layers, len(members), members.index(listen))
    return LayerSpan(start, end, num_layers)


class Node:
    """One swarmd daemon. ``run`` starts everything, waits for ``stop_event``, then shuts down once."""

    def __init__(self, cfg: NodeConfig, keyring: Keyring | None = None, notifier: Notifier | None = None) -> None:
        if keyring is None and not cfg.net.insecure:
            raise ConfigError("a swarm key is required (or run with --insecure)")
        self.cfg = cfg
        self.keyring = keyring
        self.node_id = cfg.node_id or default_node_id()
        self.notifier = notifier or Notifier()
        self.state = NodeState.STARTING
        self.accepting = True
        self.model_name = cfg.model.source
        self.loaded: Any = None  # engine.runtime.LoadedModel
        self.engine: Any = None  # engine.runtime.Engine when this node holds layers
        self.span: LayerSpan | None = None
        self._codec: Any = None
        self.stage_service: StageService | None = None
        self.mesh = Mesh(cfg.net, keyring, self.node_id, self._hello, self._dispatch, self._peer_lost)
        self.entry = RingEntry(Hop(self.node_id, "", 0, 0), self.mesh.send, self.plan)
        self._active = 0
        self._started = time.monotonic()
        self._load_progress = "starting"
        self.api = ApiServer(cfg.api, build_app(cfg.api, self, self.status_document),
                             shutdown_timeout=cfg.drain_timeout_s)
        self._stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.discovery: Any = None  # discovery.mdns.MdnsDiscovery while running

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        await self.api.start()
        try:
            load = asyncio.create_task(self._load(), name="swarmd-load")
            stopper = asyncio.create_task(stop_event.wait(), name="swarmd-stop-wait")
            done, _ = await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if load in done:
                load.result()  # raise a load error
                await self.mesh.start()
                self.entry.self_hop = Hop(self.node_id, self.mesh.advertised, 0, 0)
                await self._start_discovery()
                self.state = NodeState.SERVING
                self.notifier.ready(f"serving {self.model_name}")
                log.info("node %s serving %s; api %s, peers on %s", self.node_id, self.model_name,
                         self.cfg.api.socket, self.mesh.advertised)
                await stopper
            else:
                log.info("stop requested while loading")
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)
            stopper.cancel()
        finally:
            await self.shutdown()

    async def _load(self) -> None:
        from .engine.runtime import Engine, load_meta, load_stage
        from .engine.text import TextCodec

        def progress(what: str, done: int, total: int) -> None:
            text = f"{what} {done}/{total}" if total > 1 else what
            if text != self._load_progress:
                self._load_progress = text
                if total <= 1 or done == total or done % max(1, total // 4) == 0:
                    log.info("%s", text)
                    self.notifier.status(text)

        self.notifier.status(f"loading {self.model_name}")
        loaded = await asyncio.to_thread(load_meta, self.cfg.model, self.cfg.engine)
        self.model_name = loaded.source.name
        self._codec = TextCodec(loaded.tokenizer, loaded.config)
        self.span = resolve_span(self.cfg.engine.layers, loaded.num_layers, self.cfg.net.listen, self.cfg.net.peers)
        if self.span is not None:
            loaded.stage = await asyncio.to_thread(load_stage, loaded, self.cfg.model, self.cfg.engine, self.span,
                                                   progress)
            weights = loaded.stage.parameter_bytes()
            budget = self.cfg.engine.memory_budget
            kv_bytes = self.cfg.engine.kv_default_bytes if budget is None else budget - weights
            if kv_bytes <= 0:
                raise ConfigError(f"memory budget {budget} bytes does not even hold the weights ({weights} bytes)")
            self.engine = Engine(loaded.stage, self.cfg.engine, kv_bytes)
            self.stage_service = StageService(self.engine, self.node_id, self.mesh.send, self.cfg.net.session_idle_s)
            self.stage_service.start()
        self.loaded = loaded
        self._load_progress = "loaded"

    async def _start_discovery(self) -> None:
        """mDNS proposes peers of the same swarm (by key id); the mesh connects and the handshake decides."""
        if not self.cfg.net.mdns:
            return
        from .discovery.mdns import MdnsDiscovery

        host, port = parse_hostport(self.mesh.advertised)
        key_id = self.keyring.public_id if self.keyring is not None else "insecure"
        addresses = None if host in ("0.0.0.0", "") else [host]
        self.discovery = MdnsDiscovery(self.node_id, key_id, port, lambda c: self.mesh.link(c.addr), addresses)
        try:
            await self.discovery.start()
        except OSError as exc:  # no multicast-capable interface: static peers still work
            log.warning("mDNS discovery unavailable: %s", exc)
            self.discovery = None

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight sessions finish up to the drain timeout, then close everything."""
        if self._stopped:
            return
        self._stopped = True
        self.accepting = False
        self.state = NodeState.DRAINING
        self.notifier.stopping()
        log.info("shutting down: draining %d session(s) for up to %.0fs", self._active, self.cfg.drain_timeout_s)
        await self.api.stop()
        if self.stage_service is not None:
            await self.stage_service.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mesh.stop()
        if self.engine is not None:
            await self.engine.close()
        log.info("stopped")

    # --- the ring --------------------------------------------------------------------------------

    def _hello(self, advertised: str) -> Hello:
        cfg = self.loaded.config if self.loaded is not None else None
        span = self.span
        return Hello(
            self.node_id, advertised, __version__, self.model_name,
            int(cfg.num_hidden_layers) if cfg is not None else 0, int(cfg.hidden_size) if cfg is not None else 0,
            span.start if span else -1, span.end if span else -1, self.cfg.engine.device,
        )

    def holders(self) -> list[Holder]:
        out = [Holder(self.node_id, self.mesh.advertised, self.span.start, self.span.end)] \
            if self.span is not None and self.engine is not None else []
        for info in self.mesh.table.alive():
            link = self.mesh.links.get(info.addr)
            if info.span is not None and link is not None and link.up:
                out.append(Holder(info.node_id, info.addr, *info.span))
        return out

    def plan(self) -> list[Hop] | None:
        if self.loaded is None:
            return None
        return plan_chain(self.holders(), self.loaded.num_layers, prefer=self.node_id)

    def _dispatch(self, msg: Message, sender: str) -> None:
        if isinstance(msg, STAGE_MESSAGES):
            if self.stage_service is not None:
                self.stage_service.handle(msg, sender)
            elif isinstance(msg, SessionOpen):
                reply = SessionError(msg.session_id, self.node_id, "not_ready", "this node holds no layers", 1.0)
                self._spawn(self.mesh.send(msg.entry, reply))
        else:
            self.entry.handle(msg, sender)

    def _spawn(self, coro: Any) -> None:
        """Run a small task owned by the node (cancelled at shutdown); failures are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.debug("background send failed: %s", t.exception())

        task.add_done_callback(done)

    def _peer_lost(self, node_id: str) -> None:
        self.entry.peer_lost(node_id)

    # --- what the API asks -------------------------------------------------------------------------

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def max_context(self) -> int:
        return int(self.loaded.max_context) if self.loaded is not None else 0

    def can_serve(self) -> bool:
        return self.accepting and self.state == NodeState.SERVING and self.plan() is not None

    def new_generation(self, request: GenerationRequest) -> Generation:
        if self._codec is None:
            raise NotReady("the model is still loading")
        net = self.cfg.net
        return Generation(self.entry, request, self._codec.decode, prefill_chunk=net.prefill_chunk,
                          open_timeout_s=net.open_timeout_s, token_timeout_s=self.cfg.engine.step_timeout_s)

    def session_started(self) -> None:
        if self._active >= self.cfg.api.max_sessions:
            raise CapacityError(f"this node already runs {self._active} sessions (limit {self.cfg.api.max_sessions})")
        self._active += 1

    def session_ended(self) -> None:
        self._active -= 1

    def status_document(self) -> dict[str, Any]:
        chain = self.plan() if self.loaded is not None else None
        state = self.state
        if state == NodeState.SERVING and chain is None:
            state = NodeState.DEGRADED
        doc: dict[str, Any] = {
            "node_id": self.node_id,
            "state": state.value,
            "listen": self.mesh.advertised or None,
            "version": __version__,
            "model": {"name": self.model_name,
                      "num_layers": self.loaded.num_layers if self.loaded is not None else None},
            "layers": self.span.as_list() if self.span is not None else None,
            "peers": self.mesh.peers_status(),
            "coverage": coverage(self.holders()),
            "ring": [h.node_id for h in chain] if chain else [],
            "device": self.cfg.engine.device,
            "secure": self.keyring is not None,
            "key_id": self.keyring.public_id if self.keyring is not None else None,
            "sessions": {"active": self._active, "limit": self.cfg.api.max_sessions,
                         "as_stage": len(self.stage_service.sessions) if self.stage_service else 0},
            "uptime_s": round(time.monotonic() - self._started, 1),
            "loading": self._load_progress if self.state == NodeState.STARTING else None,
            "rejected_connections": dict(self.mesh.server.rejected),
        }
        if self.engine is not None:
            b = self.engine.budget
            doc["kv_cache"] = {"budget_bytes": b.capacity, "used_bytes": b.used, "sessions": b.sessions}
        return doc

