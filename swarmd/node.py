"""The composition root: builds the engine, pipeline and API, owns their lifetimes and the status document."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from typing import Any

from . import __version__
from .api.app import ApiServer, build_app
from .config import NodeConfig
from .errors import CapacityError, ConfigError, NotReady
from .ring.generation import Generation
from .ring.pipeline import LocalPipeline
from .sdnotify import Notifier
from .types import GenerationRequest, NodeState

log = logging.getLogger(__name__)


def default_node_id() -> str:
    return f"{socket.gethostname()[:40]}-{secrets.token_hex(3)}"


class Node:
    """One swarmd daemon. ``run`` starts everything, waits for ``stop_event``, then shuts down once."""

    def __init__(self, cfg: NodeConfig, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id or default_node_id()
        self.notifier = notifier or Notifier()
        self.state = NodeState.STARTING
        self.accepting = True
        self.model_name = cfg.model.source
        self.loaded: Any = None  # engine.runtime.LoadedModel once loaded
        self.engine: Any = None  # engine.runtime.Engine when this node holds layers
        self._codec: Any = None
        self._pipeline: LocalPipeline | None = None
        self._active = 0
        self._started = time.monotonic()
        self._load_progress = "starting"
        app = build_app(cfg.api, self, self.status_document)
        self.api = ApiServer(cfg.api, app, shutdown_timeout=cfg.drain_timeout_s)
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        await self.api.start()
        try:
            load = asyncio.create_task(self._load(), name="swarmd-load")
            stopper = asyncio.create_task(stop_event.wait(), name="swarmd-stop-wait")
            done, _ = await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if load in done:
                load.result()  # raise a load error
                self.notifier.ready(f"serving {self.model_name}")
                log.info("node %s serving %s on %s", self.node_id, self.model_name, self.cfg.api.socket)
                await stopper
            else:
                log.info("stop requested while loading")
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)
            stopper.cancel()
        finally:
            await self.shutdown()

    async def _load(self) -> None:
        from .engine.runtime import Engine, load_model
        from .engine.text import TextCodec

        def progress(what: str, done: int, total: int) -> None:
            text = f"{what} {done}/{total}" if total > 1 else what
            if text != self._load_progress:
                self._load_progress = text
                if total <= 1 or done == total or done % max(1, total // 10) == 0:
                    log.info("%s", text)
                    self.notifier.status(text)

        self.notifier.status(f"loading {self.model_name}")
        loaded = await asyncio.to_thread(load_model, self.cfg.model, self.cfg.engine, progress)
        self.loaded = loaded
        self.model_name = loaded.source.name
        self._codec = TextCodec(loaded.tokenizer, loaded.config)
        if loaded.stage is not None:
            weights = loaded.stage.parameter_bytes()
            budget = self.cfg.engine.memory_budget
            kv_bytes = self.cfg.engine.kv_default_bytes if budget is None else budget - weights
            if kv_bytes <= 0:
                raise ConfigError(f"memory budget {budget} bytes does not even hold the weights ({weights} bytes)")
            self.engine = Engine(loaded.stage, self.cfg.engine, kv_bytes)
            if loaded.stage.span.is_first and loaded.stage.span.is_last:
                self._pipeline = LocalPipeline(self.engine)
        self.state = NodeState.SERVING if self._pipeline is not None else NodeState.DEGRADED
        self._load_progress = "loaded"

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight sessions finish up to the drain timeout, cancel the rest."""
        if self._stopped:
            return
        self._stopped = True
        self.accepting = False
        self.state = NodeState.DRAINING
        self.notifier.stopping()
        log.info("shutting down: draining %d session(s) for up to %.0fs", self._active, self.cfg.drain_timeout_s)
        await self.api.stop()
        if self.engine is not None:
            await self.engine.close()
        log.info("stopped")

    # --- what the API asks -------------------------------------------------------------------------

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def max_context(self) -> int:
        return int(self.loaded.max_context) if self.loaded is not None else 0

    def can_serve(self) -> bool:
        return self.accepting and self.state == NodeState.SERVING and self._pipeline is not None

    def new_generation(self, request: GenerationRequest) -> Generation:
        if self._pipeline is None or self._codec is None:
            raise NotReady("no route covers every layer of the model yet")
        return Generation(self._pipeline, request, self._codec.decode)

    def session_started(self) -> None:
        if self._active >= self.cfg.api.max_sessions:
            raise CapacityError(f"this node already runs {self._active} sessions (limit {self.cfg.api.max_sessions})")
        self._active += 1

    def session_ended(self) -> None:
        self._active -= 1

    def status_document(self) -> dict[str, Any]:
        span = self.loaded.stage.span if self.loaded is not None and self.loaded.stage is not None else None
        doc: dict[str, Any] = {
            "node_id": self.node_id,
            "state": self.state.value,
            "listen": None,  # the peer-to-peer listener arrives with the ring
            "version": __version__,
            "model": {"name": self.model_name,
                      "num_layers": self.loaded.num_layers if self.loaded is not None else None},
            "layers": span.as_list() if span is not None else None,
            "peers": [],
            "coverage": [{"layers": span.as_list(), "replicas": 1}] if span is not None else [],
            "ring": [self.node_id] if span is not None else [],
            "device": self.cfg.engine.device,
            "sessions": {"active": self._active, "limit": self.cfg.api.max_sessions},
            "uptime_s": round(time.monotonic() - self._started, 1),
            "loading": self._load_progress if self.state == NodeState.STARTING else None,
        }
        if self.engine is not None:
            b = self.engine.budget
            doc["kv_cache"] = {"budget_bytes": b.capacity, "used_bytes": b.used, "sessions": b.sessions}
        return doc
