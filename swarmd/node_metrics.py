"""The metrics one node exports on ``GET /metrics`` (Prometheus text).

Names follow the LLM servers' conventions (vLLM's ``vllm:time_to_first_token_seconds`` and friends) under
the prefix ``swarmd:``. Request metrics are those of generations this node is the entry of; stage metrics
those of steps its spans ran for any entry. Counts other components keep (rejected connections, gossip
drops, replays, spot-check findings, members) are read at scrape time.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any

from .metrics import CONTENT_TYPE, Registry

if TYPE_CHECKING:
    from .node import Node

__all__ = ["CONTENT_TYPE", "NodeMetrics", "RequestTrack"]

P = "swarmd:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0,
               240.0, 480.0, 960.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0)
HOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PEER_STATES = ("alive", "suspect", "dead", "left")


class RequestTrack:
    """One API request from arrival to its end: waiting (opening a chain), running, then finished or failed."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics
        self.arrived = time.monotonic()
        self.last_token: float | None = None
        self.tokens = 0
        self.state = "waiting"
        metrics.waiting.inc(1)

    def running(self, prompt_tokens: int) -> None:
        if self.state == "waiting":
            self.state = "running"
            self.m.waiting.inc(-1)
            self.m.running.inc(1)
            self.m.prompt_tokens.inc(prompt_tokens)

    def token(self) -> None:
        """A token released to the client (the generation's ``on_token``)."""
        now = time.monotonic()
        if self.last_token is None:
            self.m.ttft.observe(now - self.arrived)
        else:
            self.m.itl.observe(now - self.last_token)
        self.last_token = now
        self.tokens += 1
        self.m.generation_tokens.inc(1)

    def end(self, finished_reason: str | None, error_code: str | None = None) -> None:
        if self.state == "ended":
            return
        (self.m.waiting if self.state == "waiting" else self.m.running).inc(-1)
        self.state = "ended"
        if error_code is not None:
            self.m.failures.inc(1, code=error_code)
            return
        self.m.e2e.observe(time.monotonic() - self.arrived)
        self.m.successes.inc(1, finished_reason=finished_reason or "stop")


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = Registry()
        self.ttft = r.histogram(P + "time_to_first_token_seconds",
                                "Seconds from a request's arrival to its first generated token.", TTFT_BUCKETS)
        self.itl = r.histogram(P + "inter_token_latency_seconds",
                               "Seconds between two consecutive generated tokens of a request.", ITL_BUCKETS)
        self.e2e = r.histogram(P + "e2e_request_latency_seconds",
                               "Seconds from a request's arrival to its last token (finished requests).",
                               E2E_BUCKETS)
        self.prompt_tokens = r.counter(P + "prompt_tokens", "Prompt tokens of requests that started generating.")
        self.generation_tokens = r.counter(P + "generation_tokens", "Tokens generated for clients of this node.")
        self.successes = r.counter(P + "request_success", "Requests finished, by finish reason.",
                                   ("finished_reason",))
        self.failures = r.counter(P + "request_failure", "Requests that ended in an error, by error code.",
                                  ("code",))
        self.running = r.gauge(P + "num_requests_running", "Requests generating tokens on this entry now.")
        self.waiting = r.gauge(P + "num_requests_waiting",
                               "Requests waiting for a chain of stages to accept them (KV memory, opening).")
        self.peers = r.gauge(P + "peers", "Members this node knows, by state (itself not counted).", ("state",))
        self.recoveries = r.counter(P + "route_recoveries",
                                    "Generations replayed onto another chain after a stage failed or lied.")
        self.spot_checks = r.counter(P + "spot_check_steps", "Steps of audited sessions compared by this entry.")
        self.mismatches = r.counter(P + "spot_check_mismatches",
                                    "Compared steps where an audited stage and its shadow disagreed.")
        self.quarantined = r.gauge(P + "quarantined_members", "Members quarantined for wrong outputs (swarm view).")
        self.rejected = r.counter(P + "frames_rejected",
                                  "Peer connections closed or gossip messages dropped, by reason.", ("reason",))
        self.queue = r.histogram(P + "stage_queue_seconds",
                                 "Seconds a step waited in a span's queue before its batched forward.",
                                 STEP_BUCKETS, ("span",))
        self.compute = r.histogram(P + "stage_compute_seconds",
                                   "Seconds of the batched forward that ran a step, per span.", STEP_BUCKETS,
                                   ("span",))
        self.disconnects = r.counter(P + "peer_disconnects", "Authenticated peer connections that ended, by how.",
                                     ("how",))
        self.stage_sessions = r.gauge(P + "stage_sessions", "Ring sessions open on this node's spans.")
        self.hop = r.histogram(P + "hop_latency_seconds",
                               "Round trip of a ping on this node's link to a peer (one hop of a chain).",
                               HOP_BUCKETS, ("peer",))
        self.kv_usage = r.gauge(P + "kv_cache_usage_perc", "Share of this node's KV cache budget in use (0-1).")
        self.info = r.gauge(P + "node_info", "Constant 1, labelled with what this node is.",
                            ("node_id", "model", "version"))

    def request(self) -> RequestTrack:
        return RequestTrack(self)

    def stage_step(self, span: tuple[int, int], queue_s: float, compute_s: float) -> None:
        label = f"{span[0]}:{span[1]}"
        self.queue.observe(queue_s, span=label)
        self.compute.observe(compute_s, span=label)

    def hop_rtt(self, peer: str, rtt_s: float) -> None:
        self.hop.observe(rtt_s, peer=peer)

    def bind(self, node: Node) -> None:
        """Read the counts the node's components keep, at every scrape."""
        from . import __version__

        def collect() -> None:
            states = Tally(p.state for p in node.view.peers.values())
            for state in PEER_STATES:
                self.peers.set(states.get(state, 0), state=state)
            self.recoveries.set_total(node.replays)
            stats: Any = node.auditor.stats if node.auditor is not None else None
            if stats is not None:
                self.spot_checks.set_total(stats.steps)
                self.mismatches.set_total(stats.mismatches)
            self.quarantined.set(len(node.safety.distrusted()))
            rejected: Tally[str] = Tally(node.mesh.server.rejected)
            for how, n in node.mesh.server.disconnects.items():
                self.disconnects.set_total(n, how=how)
            if node.membership is not None:
                rejected.update(node.membership.swim.dropped)
                rejected.update(node.membership.rejected)
            for reason, n in rejected.items():
                self.rejected.set_total(n, reason=reason)
            self.stage_sessions.set(node.host.session_count)
            known = {p.node_id for p in node.view.peers.values()} | {link.addr for link in node.mesh.links.values()}
            self.hop.retain(lambda key: key[0] in known)  # peers forgotten by the view go from /metrics too
            engine = node.engine
            budget = engine.budget if engine is not None else None
            self.kv_usage.set(budget.used / budget.capacity if budget is not None and budget.capacity else 0.0)
            self.info.clear()
            self.info.set(1, node_id=node.node_id, model=node.model_name, version=__version__)

        self.registry.collector(collect)

    def render(self) -> str:
        return self.registry.render()
