"""The composition root: builds engine stages, ring entry, mesh, membership, placement and API; owns
their lifetimes and their one shutdown path."""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import socket
import time
from dataclasses import replace
from typing import Any

from . import __version__
from .api.app import ApiServer, build_app
from .config import NodeConfig, parse_hostport
from .device_watch import watch_workers
from .engine.interface import EngineHandle
from .errors import CapacityError, ConfigError, NotReady
from .membership.attest import Attestor
from .membership.placement import PlacementConfig, Plan, place
from .membership.rebalance import capacity_of, model_shape
from .membership.service import Membership
from .membership.swim import MemberChanged, Swim
from .membership.swim_config import SwimConfig
from .membership.trust import Trust
from .membership.view import SwarmView
from .node_metrics import NodeMetrics
from .node_routing import NodeRouting
from .node_safety import NodeSafety, node_identity
from .placer import Placer
from .ring.audit import Auditor
from .ring.entry import RingEntry
from .ring.generation import Generation
from .ring.stage_host import Span, StageHost
from .sdnotify import Notifier
from .transport.mesh import Mesh
from .types import GenerationRequest, LayerSpan, NodeState
from .watchdog import run_watchdog
from .wire.codec import encode_meta
from .wire.crypto import Keyring
from .wire.messages import (
    PROTOCOL_VERSION,
    SWIM_TAGS,
    Forward,
    Hello,
    Hop,
    Message,
    NodeMeta,
    SessionClose,
    SessionOpen,
    SpanState,
)

log = logging.getLogger(__name__)

# KV positions per layer that placement keeps free next to the weights (one long session).
KV_RESERVE_TOKENS = 2048
# How often load (sessions, queue) is re-published when it changed.
LOAD_PUBLISH_S = 2.0


def default_node_id() -> str:
    return f"{socket.gethostname()[:40]}-{secrets.token_hex(3)}"


def routable_host() -> str:
    """The address peers can reach this host at when it listens on every interface: the source address of
    the route to the mDNS group (a UDP connect sends nothing), else the first non-loopback IPv4 address of
    an interface (``ifaddr`` comes with zeroconf), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("224.0.0.251", 5353))
            host = str(s.getsockname()[0])
            if host != "0.0.0.0":
                return host
        except OSError:
            pass
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    return ip.ip
    except ImportError:
        pass
    return "127.0.0.1"


def pinned_span(layers: str, num_layers: int) -> tuple[bool, LayerSpan | None]:
    """``(pinned, span)`` for ``--layers``: ``auto`` lets placement decide (not pinned, nothing yet);
    ``none`` and ``START:END`` are fixed by configuration."""
    if layers == "auto":
        return False, None
    if layers == "none":
        return True, None
    from .engine.runtime import parse_span

    return True, parse_span(layers, num_layers)


class Node:
    """One swarmd daemon. ``run`` starts everything, waits for ``stop_event``, then shuts down once."""

    def __init__(self, cfg: NodeConfig, keyring: Keyring | None = None, notifier: Notifier | None = None) -> None:
        if keyring is None and not cfg.net.insecure:
            raise ConfigError("a swarm key is required (or run with --insecure)")
        if cfg.net.gossip not in ("lan", "local"):
            raise ConfigError(f"unknown gossip profile {cfg.net.gossip!r}")
        self.cfg = cfg
        self.keyring = keyring
        self.node_id = cfg.node_id or default_node_id()
        self.notifier = notifier or Notifier()
        self.state = NodeState.STARTING
        self.accepting = True
        self.model_name = cfg.model.source
        self.loaded: Any = None  # engine.runtime.LoadedModel
        self.profile: Any = None  # engine.profile.ModelProfile
        self.pinned = cfg.engine.layers != "auto"
        self.memory_budget = cfg.engine.memory_budget
        self._codec: Any = None
        self.identity = node_identity(cfg, self.node_id)
        self.attestor = Attestor(self.identity, self.node_id)  # signs our gossip, checks everyone's
        self.safety = NodeSafety(self)  # quarantines and bans: who routing and links leave out
        self.routing = NodeRouting(self)  # holders, best chain, its step time and load
        self.mesh = Mesh(cfg.net, keyring, self.node_id, self._hello, self._dispatch, self._peer_lost, self._resolve)
        self.mesh.refuse = self.safety.refuse_link
        self.mesh.sign_hello = self.safety.sign_hello
        self.mesh.own_identity = self.identity.public
        self.host = StageHost(self.node_id, self.mesh.send, cfg.net.session_idle_s, self._spawn)
        self.trust = Trust(cfg.net.quarantine_s)
        self.auditor = Auditor(cfg.net.spot_check, cfg.net.probation_steps, self.safety.replicas,
                               cfg.net.spot_check_seed) \
            if cfg.net.spot_check > 0 else None
        self.entry = RingEntry(Hop(self.node_id, "", 0, 0), self.mesh.send, self.routing.plan,
                               accept_timeout_s=self.cfg.net.accept_timeout_s, answered_since=self.mesh.answered_since,
                               nudge=self.mesh.nudge, auditor=self.auditor, audit_dtype=self.safety.audit_dtype,
                               on_dissent=self.safety.dissent)
        self.view = SwarmView(self.node_id)
        self.membership: Membership | None = None
        self.swim_addr = ""
        self.placer: Placer | None = None  # once the model's shape is known
        self._published_load: tuple[int, int] = (0, 0)
        self._active = 0
        self.replays = 0  # generations this entry replayed onto another chain
        self.last_replay: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._load_progress = "starting"
        self.metrics = NodeMetrics()
        self.metrics.bind(self)
        self.mesh.on_rtt = self.metrics.hop_rtt
        self.api = ApiServer(cfg.api, build_app(cfg.api, self, self.status_document, self.metrics),
                             shutdown_timeout=cfg.drain_timeout_s)
        self._stopped = False
        self._stop_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.discovery: Any = None  # discovery.mdns.MdnsDiscovery while running
        self.discovery_error: str | None = None  # why mDNS could not start (swarmctl doctor)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        self._stop_event = stop_event
        await self.api.start()
        if self.cfg.engine.tensor_parallel > 1:  # from the first span on: a pinned one is served while starting
            self._own(watch_workers(self), "device-watch")
        try:
            start = asyncio.create_task(self._start(), name="swarmd-start")
            stopper = asyncio.create_task(stop_event.wait(), name="swarmd-stop-wait")
            done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if start in done:
                start.result()  # raise a load error
                self.state = NodeState.SERVING
                self._publish()
                self.notifier.ready(f"serving {self.model_name}")
                if (watchdog_s := self.notifier.watchdog_interval) is not None:
                    self._own(run_watchdog(self.notifier, watchdog_s), "watchdog")
                log.info("node %s serving %s; api %s, peers on %s", self.node_id, self.model_name,
                         self.cfg.api.socket, self.swim_addr)
                if not self.pinned and self.placer is not None:
                    self._own(self.placer.run(), "placement")
                self._own(self._load_reporter(), "load-reporter")
                await stopper
            else:
                log.info("stop requested while starting")
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
            stopper.cancel()
        finally:
            await self.shutdown()

    async def _start(self) -> None:
        """Load the model's metadata, measure this node, join the swarm, and take the first layers."""
        self.notifier.status(f"loading {self.model_name}")
        # Importing torch and transformers takes seconds: off the loop, so the API answers meanwhile.
        await asyncio.to_thread(importlib.import_module, "swarmd.engine.runtime")
        from .engine.profile import default_memory_budget, profile_model
        from .engine.runtime import load_meta
        from .engine.text import TextCodec

        loaded = await asyncio.to_thread(load_meta, self.cfg.model, self.cfg.engine)
        self.model_name = loaded.source.name
        self._codec = TextCodec(loaded.tokenizer, loaded.config)
        self.view = SwarmView(self.node_id, self.model_name, loaded.num_layers)
        _, span = pinned_span(self.cfg.engine.layers, loaded.num_layers)
        self.loaded = loaded
        self._load_progress = "calibrating"
        self.profile = await asyncio.to_thread(profile_model, loaded.config, self.cfg.engine)
        if self.memory_budget is None:
            self.memory_budget = await asyncio.to_thread(default_memory_budget, self.cfg.engine.device,
                                                         self.cfg.engine.tensor_parallel)
        self.placer = Placer(self.node_id, self.host, loaded.num_layers, self.cfg.net.settle_s, self._plan,
                             self.routing.holders, self._load_span, self._publish, lambda: self.accepting)
        if span is not None:
            await self._load_span((span.start, span.end))
        await self._join()
        if not self.pinned:
            await self._first_placement()
        self._load_progress = "loaded"

    async def _join(self) -> None:
        await self.mesh.start()
        host, port = parse_hostport(self.mesh.advertised)
        if host in ("0.0.0.0", "", "::"):
            host = routable_host()
        self.swim_addr = f"{host}:{port}"
        self.entry.self_hop = Hop(self.node_id, self.swim_addr, 0, 0)
        swim_cfg = SwimConfig.local() if self.cfg.net.gossip == "local" else SwimConfig.lan()
        swim = Swim(self.node_id, self.swim_addr, swim_cfg, meta=self._encoded_meta(), attestor=self.attestor)
        self.membership = Membership(swim, self.mesh.post, self._on_member, connect=self.mesh.connect)
        self.membership.start(self.cfg.net.peers)
        await self._start_discovery()

    async def _first_placement(self) -> None:
        """Give discovery and gossip ``settle_s`` to show the swarm (none when this node knows no way to
        find peers), then take this node's part of the plan before declaring itself ready."""
        if self.cfg.net.peers or self.discovery is not None:
            self._load_progress = "joining"
            await asyncio.sleep(self.cfg.net.settle_s)
        assert self.placer is not None
        await self.placer.first()

    async def _start_discovery(self) -> None:
        """mDNS proposes peers of the same swarm (by key id); gossip and the handshake decide."""
        if not self.cfg.net.mdns:
            return
        from .discovery.mdns import MdnsDiscovery

        host, port = parse_hostport(self.swim_addr)
        key_id = self.keyring.public_id if self.keyring is not None else "insecure"
        listen_host = parse_hostport(self.mesh.advertised)[0]
        addresses = None if listen_host in ("0.0.0.0", "") else [host]
        membership = self.membership
        assert membership is not None
        self.discovery = MdnsDiscovery(self.node_id, key_id, port, lambda c: membership.contact(c.addr), addresses)
        try:
            await self.discovery.start()
        except OSError as exc:  # no multicast-capable interface: static peers still work
            log.warning("mDNS discovery unavailable: %s", exc)
            self.discovery_error = str(exc)
            await self.discovery.stop()
            self.discovery = None

    async def shutdown(self) -> None:
        """Tell the swarm this node drains, let in-flight sessions finish up to the drain timeout, leave, close."""
        if self._stopped:
            return
        self._stopped = True
        self.accepting = False
        self.state = NodeState.DRAINING
        self.notifier.stopping()
        self._publish()
        log.info("shutting down: draining %d session(s) here and %d as a stage for up to %.0fs", self._active,
                 self.host.session_count, self.cfg.drain_timeout_s)
        await asyncio.gather(self.api.stop(), self._drain_stages(self.cfg.drain_timeout_s))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop(leave=True)
        if self.discovery is not None:
            await self.discovery.stop()
        await self.host.stop()
        await self.mesh.stop()
        log.info("stopped")

    async def _drain_stages(self, timeout: float) -> None:
        """Let sessions of other entries finish on this node's stages (no new ones come: health is
        draining); whatever is left at the timeout is told to its entry, which replays it elsewhere."""
        deadline = time.monotonic() + timeout
        # Sessions end in several places (finish, close, error, idle): a short poll beats an event in each.
        while self.host.session_count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def ban(self, node_id: str) -> dict[str, object]:
        """``swarmctl ban`` (through the API)."""
        return self.safety.ban(node_id)

    async def doctor(self) -> dict[str, Any]:
        """``swarmctl doctor``: gather the facts (probing every known address), then say what they mean."""
        from .doctor import diagnose
        from .doctor_checks import gather

        facts = await gather(self)
        return {**diagnose(facts), "facts": facts}

    def request_drain(self) -> dict[str, object]:
        """``swarmctl drain``: the SIGTERM path, started from the API (which answers first)."""
        if self._stop_event is not None:
            asyncio.get_running_loop().call_later(0.05, self._stop_event.set)
        return {"status": "draining", "sessions": self._active + self.host.session_count,
                "timeout_s": self.cfg.drain_timeout_s}

    # --- layers: loading, placement, make-before-break ----------------------------------------------

    async def _load_span(self, span: Span) -> None:
        from .engine.runtime import Engine, load_stage

        def progress(what: str, done: int, total: int) -> None:
            text = f"{what} {done}/{total}" if total > 1 else what
            if text != self._load_progress:
                self._load_progress = text
                if total <= 1 or done == total or done % max(1, total // 4) == 0:
                    self.notifier.status(text)

        self.host.loading(span)
        self._publish()
        stage: Any = None
        try:
            layer_span = LayerSpan(span[0], span[1], self.loaded.num_layers)
            stage = await asyncio.to_thread(load_stage, self.loaded, self.cfg.model, self.cfg.engine, layer_span,
                                            progress)
            weights = stage.parameter_bytes()
            budget = self.cfg.engine.memory_budget
            kv_bytes = self.cfg.engine.kv_default_bytes if budget is None else budget - weights
            if kv_bytes <= 0:
                raise ConfigError(f"memory budget {budget} bytes does not even hold the weights ({weights} bytes)")
        except BaseException:
            self.host.slots.pop(span, None)
            self._publish()
            if stage is not None and hasattr(stage, "close"):  # a tensor-parallel span's worker processes
                await asyncio.to_thread(stage.close)
            raise
        self.loaded.stage = stage
        engine = Engine(stage, self.cfg.engine, kv_bytes)
        try:
            await asyncio.to_thread(engine.prepare)  # the KV pool; on a GPU, the decode graphs
        except BaseException:
            await engine.close()
            self.host.slots.pop(span, None)
            self._publish()
            raise
        engine.observe = self.metrics.stage_step
        self.host.serve(span, engine)
        self._publish()

    def _plan(self) -> Plan | None:
        """The swarm-wide placement from this node's view (the same on every node with the same view)."""
        p = self.profile
        if p is None or self.loaded is None:
            return None
        shape = model_shape(self.loaded.num_layers, p.params_per_layer, p.embed_params, p.head_params,
                            p.kv_per_token_layer, min(KV_RESERVE_TOKENS, self.max_context))
        nodes = [capacity_of(self.node_id, self._meta())]
        excluded = self.safety.excluded()
        nodes += [capacity_of(peer.node_id, peer.meta) for peer in self.view.live()
                  if peer.meta is not None and peer.node_id not in excluded]
        try:
            return place([n for n in nodes if n is not None], shape, PlacementConfig())
        except ValueError as exc:  # e.g. two members with one id: wait for gossip to settle it
            log.warning("placement skipped: %s", exc)
            return None

    # --- membership ------------------------------------------------------------------------------------

    def _meta(self) -> NodeMeta:
        p = self.profile
        spans = tuple(SpanState(s.span[0], s.span[1], s.state) for s in self.host.slots.values())
        health = self.state.value if self.accepting else "draining"
        return NodeMeta(
            __version__, PROTOCOL_VERSION, self.model_name, self.loaded.num_layers if self.loaded else 0,
            self.device_label, int(self.memory_budget or 0), p.dtype_bytes if p else 0,
            float(p.seconds_per_layer) if p else 0.0, spans, self.host.session_count, self.host.queue_depth,
            health, self.pinned, self.trust.published(time.monotonic()), self.safety.published_bans(),
        )

    def _encoded_meta(self) -> bytes:
        """This node's metadata as gossip carries it; quarantines, then bans, are cut (oldest first) when
        they would not fit the metadata cap."""
        meta = self._meta()
        while True:
            try:
                return encode_meta(meta)
            except ValueError:
                if not meta.quarantined and not meta.banned:
                    raise
                meta = replace(meta, quarantined=meta.quarantined[1:]) if meta.quarantined else \
                    replace(meta, banned=meta.banned[1:])

    def _publish(self) -> None:
        if self.membership is not None:
            self._published_load = (self.host.session_count, self.host.queue_depth)
            self.membership.set_meta(self._encoded_meta())

    async def _load_reporter(self) -> None:
        while True:
            await asyncio.sleep(LOAD_PUBLISH_S)
            if (self.host.session_count, self.host.queue_depth) != self._published_load:
                self._publish()

    def _on_member(self, change: MemberChanged) -> None:
        if not self.view.apply(change):
            return
        m = change.member
        if (peer := self.view.peers.get(m.node_id)) is not None and peer.live:
            self.safety.adopt_bans(peer.meta, m.node_id)
        if change.removed or m.state in ("dead", "left"):
            self.entry.peer_lost(m.node_id)
            stale = self.mesh.forget(m.addr)
            if stale is not None:
                self._spawn(stale.stop())
        if change.previous is None and m.state == "alive":
            log.info("member %s joined at %s", m.node_id, m.addr)
        elif change.previous != m.state:
            log.info("member %s is %s", m.node_id, "removed" if change.removed else m.state)
        if self.placer is not None:
            self.placer.view_changed()

    def _resolve(self, node_id: str) -> str | None:
        peer = self.view.peers.get(node_id)
        return peer.addr if peer is not None and peer.live else None

    # --- the ring --------------------------------------------------------------------------------

    def _hello(self, advertised: str) -> Hello:
        cfg = self.loaded.config if self.loaded is not None else None
        slot = self.host.primary()
        span = slot.span if slot is not None else (-1, -1)
        return Hello(
            self.node_id, self.swim_addr or advertised, __version__, self.model_name,
            int(cfg.num_hidden_layers) if cfg is not None else 0, int(cfg.hidden_size) if cfg is not None else 0,
            span[0], span[1], self.device_label, wall_ms=int(time.time() * 1000),
            mdns=self.discovery is not None and self.discovery.registered,
        )

    def _dispatch(self, msg: Message, sender: str) -> None:
        if msg.TAG in SWIM_TAGS:
            if self.membership is not None:
                self.membership.receive(msg, sender)
        elif isinstance(msg, (SessionOpen, Forward, SessionClose)):  # stage work
            self.host.handle(msg, sender)
        else:
            self.entry.handle(msg, sender)

    def _spawn(self, coro: Any) -> None:
        """Run a small task owned by the node (cancelled at shutdown); failures are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.debug("background task failed: %s", t.exception())

        task.add_done_callback(done)

    def _own(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"swarmd-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _peer_lost(self, node_id: str) -> None:
        self.entry.peer_lost(node_id)

    # --- what the API asks -------------------------------------------------------------------------

    @property
    def codec(self) -> Any:
        return self._codec

    @property
    def engine(self) -> EngineHandle | None:
        """The engine of this node's newest serving span (None when it serves none)."""
        slot = self.host.primary()
        return slot.engine if slot is not None else None

    @property
    def device_label(self) -> str:
        """What peers see of this node's device: ``cuda:0`` or, tensor-parallel, ``cuda:0 tp=2``."""
        tp = self.cfg.engine.tensor_parallel
        return self.cfg.engine.device + (f" tp={tp}" if tp > 1 else "")

    @property
    def span(self) -> LayerSpan | None:
        slot = self.host.primary()
        return LayerSpan(slot.span[0], slot.span[1], self.loaded.num_layers) if slot is not None else None

    @property
    def max_context(self) -> int:
        return int(self.loaded.max_context) if self.loaded is not None else 0

    def can_serve(self) -> bool:
        return self.accepting and self.state == NodeState.SERVING and self.routing.plan() is not None

    def new_generation(self, request: GenerationRequest) -> Generation:
        if self._codec is None:
            raise NotReady("the model is still loading")
        net = self.cfg.net
        return Generation(self.entry, request, self._codec.decode, prefill_chunk=net.prefill_chunk,
                          open_timeout_s=net.open_timeout_s, token_timeout_s=self.cfg.engine.step_timeout_s,
                          stall_timeout_s=net.stall_timeout_s, step_estimate_s=self.routing.step_estimate(),
                          load=self.routing.chain_load, recovery_timeout_s=net.recovery_timeout_s,
                          on_recovery=self._recovered)

    def _recovered(self, rec: Any) -> None:
        self.replays += 1
        self.last_replay = {"at_step": rec.at_step, "failed_node": rec.failed_node, "reason": rec.reason,
                            "seconds": round(rec.seconds, 4), "attempts": rec.attempts}

    def session_started(self) -> None:
        if self._active >= self.cfg.api.max_sessions:
            raise CapacityError(f"this node already runs {self._active} sessions (limit {self.cfg.api.max_sessions})")
        self._active += 1

    def session_ended(self) -> None:
        self._active -= 1

    def status_document(self) -> dict[str, Any]:
        from .status import status_document

        return status_document(self)
