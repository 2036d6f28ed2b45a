"""From the gossiped view to this node's next layer move. Pure: the node executes what ``next_action`` says.

Every node turns the same view into the same ``placement.place`` inputs (``capacity_of``, ``model_shape``),
so every node computes the same plan and only acts on its own part of it, one action at a time,
make-before-break: it loads its new span while it keeps serving the old one; it drains an old span only
once the swarm still has a full chain without it; it drops a drained span once its sessions are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..wire.messages import NodeMeta, SpanState
from .placement import ModelShape, NodeCapacity

Span = tuple[int, int]
FLOAT32 = 4  # placement compares memory as if every node held float32 weights


@dataclass(frozen=True)
class Action:
    kind: Literal["load", "serve", "drain", "drop"]
    span: Span


def model_shape(num_layers: int, params_per_layer: int, embed_params: int, head_params: int,
                kv_per_token_layer: int, reserve_tokens: int) -> ModelShape:
    """The model's memory needs in float32 bytes, with room for ``reserve_tokens`` KV positions per layer."""
    return ModelShape(num_layers, params_per_layer * FLOAT32, embed_params * FLOAT32, head_params * FLOAT32,
                      kv_per_token_layer * FLOAT32 * reserve_tokens)


def primary(spans: tuple[SpanState, ...] | list[SpanState]) -> Span | None:
    """The span a node is moving to or keeps: its newest span that is not draining."""
    keep = [(s.start, s.end) for s in spans if s.state != "draining"]
    return keep[-1] if keep else None


def capacity_of(node_id: str, meta: NodeMeta) -> NodeCapacity | None:
    """A member as placement sees it; None for members placement leaves alone (pinned, unmeasured)."""
    if meta.pinned or not meta.seconds_per_layer > 0 or meta.dtype_bytes < 1:
        return None
    state = {"draining": "draining", "starting": "joining"}.get(meta.health, "serving")
    memory = meta.memory_bytes * FLOAT32 // meta.dtype_bytes
    return NodeCapacity(node_id, memory, meta.seconds_per_layer, state, primary(meta.spans))


def next_action(target: Span | None, slots: Mapping[Span, str], covered_without: Callable[[Span], bool],
                drained: Callable[[Span], bool]) -> Action | None:
    """This node's next step towards ``target`` given its ``slots`` (span -> loading|serving|draining).

    ``covered_without(span)``: the swarm has a full chain without this node's ``span``;
    ``drained(span)``: the draining span has no sessions left (or its drain timed out).
    """
    if target is not None:
        state = slots.get(target)
        if state is None:
            return Action("load", target)
        if state == "draining":
            return Action("serve", target)
    for span, state in sorted(slots.items()):
        if span != target and state == "serving" and covered_without(span):
            return Action("drain", span)
    for span, state in sorted(slots.items()):
        if span != target and state == "draining" and drained(span):
            return Action("drop", span)
    return None
