"""Tensor parallelism of one span: which weights split along which dimension, and the collectives.

The split follows the architecture's own transformers TP plan (``config.base_model_tp_plan``, e.g.
``layers.*.self_attn.q_proj: colwise``): a *colwise* linear keeps a contiguous slice of its output features
(whole attention heads, a slice of the MLP's intermediate features), a *rowwise* linear the matching slice
of its input features, and its partial sums are added up across ranks by one all-reduce (o_proj and
down_proj: two per layer). Norms, embeddings and the LM head stay whole on every rank.

Collectives go through a ``Group``: a process group of its own (NCCL between GPUs, Gloo on CPUs for
tests), built from a ``TCPStore`` rather than torch.distributed's global state, so that a node can run
two spans (during a rebalance) with a group each.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import NCCL_SAFE_ENV
from ..errors import ConfigError

# Used when a config carries no plan (older transformers): the Llama family's, which Qwen2/3 and Mistral share.
DEFAULT_PLAN = {
    "self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise", "self_attn.v_proj": "colwise",
    "self_attn.o_proj": "rowwise", "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise",
    "mlp.down_proj": "rowwise",
}
STYLES = {"colwise": "colwise", "local_colwise": "colwise", "rowwise": "rowwise", "local_rowwise": "rowwise"}
# Kept whole on every rank (e.g. Qwen3's per-head q_norm/k_norm, which act on head_dim only).
REPLICATED = {"replicate", "replicated", "replicated_with_grad_allreduce", "local"}
SAFE_NCCL_ENV = NCCL_SAFE_ENV


def safe_nccl_environment() -> None:
    for key, value in SAFE_NCCL_ENV.items():
        os.environ[key] = value


def layer_plan(config: object) -> dict[str, str]:
    """The decoder layer's TP plan as ``{module path inside a layer: colwise | rowwise}``."""
    raw = getattr(config, "base_model_tp_plan", None) or {}
    plan: dict[str, str] = {}
    for pattern, style in raw.items():
        if not pattern.startswith("layers.*.") or style in REPLICATED:
            continue  # embeddings, norms, the head, replicated modules: kept whole
        if style not in STYLES:  # e.g. colwise_rep (gathers its output), sequence parallel: not supported
            raise ConfigError(f"tensor parallelism: unsupported TP plan style {style!r} for {pattern}")
        plan[pattern.removeprefix("layers.*.")] = STYLES[style]
    return plan or dict(DEFAULT_PLAN)


def check_divisible(config: object, world: int) -> None:
    """Heads, KV heads and MLP features must split evenly over ``world`` ranks."""
    heads = int(config.num_attention_heads)  # type: ignore[attr-defined]
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    inter = int(getattr(config, "intermediate_size", 0) or 0)
    for what, n in (("attention heads", heads), ("key/value heads", kv), ("MLP features", inter)):
        if n and n % world:
            raise ConfigError(f"tensor parallelism over {world} devices needs {what} ({n}) divisible by {world}")


class Group:
    """The collectives of one tensor-parallel group (rank 0 is the node's engine)."""

    def __init__(self, pg: Any, rank: int, world: int, device: torch.device) -> None:
        self.pg = pg
        self.rank = rank
        self.world = world
        self.device = device

    @classmethod
    def join(cls, store: Any, rank: int, world: int, device: torch.device, timeout_s: float) -> Group:
        """Blocks until every rank has joined ``store``. ``timeout_s`` bounds every collective (Gloo)."""
        pg: Any
        if device.type == "cuda":
            torch.cuda.set_device(device)
            pg = dist.ProcessGroupNCCL(store, rank, world)  # type: ignore[attr-defined,call-arg]
        else:
            pg = dist.ProcessGroupGloo(store, rank, world, datetime.timedelta(seconds=timeout_s))
        return cls(pg, rank, world, device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.pg.allreduce([t]).wait()
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([t], opts).wait()
        return t


def make_store(world: int, timeout_s: float, port: int = 0) -> Any:
    """Rank 0's rendezvous (a free port on loopback); the other ranks connect with ``connect_store``."""
    return dist.TCPStore("127.0.0.1", port, world, True, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)


def connect_store(port: int, world: int, timeout_s: float) -> Any:
    return dist.TCPStore("127.0.0.1", port, world, False, timeout=datetime.timedelta(seconds=timeout_s))


class RowParallelLinear(nn.Module):
    """A rowwise shard: this rank's slice of the input features; the partial outputs are summed across
    ranks, then the (whole) bias is added once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: Group) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.group.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def _slice(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    size = t.shape[dim] // world
    return t.narrow(dim, rank * size, size).clone()  # a copy: the whole tensor can be freed


def shard_layer(layer: nn.Module, plan: dict[str, str], group: Group) -> None:
    """Replace the planned linears of ``layer`` by this rank's shard, in place."""
    for path, style in plan.items():
        parent_path, _, name = path.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        linear = getattr(parent, name, None)
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"tensor parallelism: the TP plan names {path}, which this layer has not as a Linear")
        w, b = linear.weight.data, linear.bias.data if linear.bias is not None else None
        if style == "colwise":
            shard = nn.Linear(1, 1, bias=b is not None, device="meta")
            shard.weight = nn.Parameter(_slice(w, 0, group.rank, group.world), requires_grad=False)
            if b is not None:
                shard.bias = nn.Parameter(_slice(b, 0, group.rank, group.world), requires_grad=False)
            shard.in_features, shard.out_features = w.shape[1], w.shape[0] // group.world
            setattr(parent, name, shard)
        else:
            setattr(parent, name, RowParallelLinear(_slice(w, 1, group.rank, group.world), b, group))
        del linear, w, b
