"""What placement needs to know about this node and the model: bytes per layer, embedding and head, KV
bytes, and the measured seconds of one decoder layer for one decode token on this device.

The calibration builds one decoder layer of the model's shape with random weights (speed does not depend
on the values), prefills a short context, then times single-token steps; no checkpoint is read.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..config import EngineConfig
from ..types import LayerSpan
from .stage import StageModel, attention_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelProfile:
    """Counts are in elements, so every node derives the same numbers from the same config; ``dtype_bytes``
    is this node's element size."""

    seconds_per_layer: float  # one decoder layer, one decode token, this device (median)
    params_per_layer: int  # weights of one decoder layer
    embed_params: int  # token embedding (held by the first span)
    head_params: int  # final norm and LM head (held by the last span)
    kv_per_token_layer: int  # K and V elements of one position in one layer
    dtype_bytes: int


def _numel(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def profile_model(config: Any, engine_cfg: EngineConfig, steps: int = 12, context: int = 64) -> ModelProfile:
    """Blocking (run off the loop): count the model's bytes and time one layer on ``engine_cfg.device``."""
    from transformers import AutoModelForCausalLM

    from .loading import parse_dtype

    device = torch.device(engine_cfg.device)
    dtype = parse_dtype(engine_cfg.dtype, device)
    item = torch.empty((), dtype=dtype).element_size()
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    body = skeleton.model
    layer_params = _numel(body.layers[0])
    embed_params = _numel(body.embed_tokens)
    head_params = _numel(body.norm) + skeleton.lm_head.weight.numel()  # a last span holds its own head
    shape = attention_shape(config)
    kv = 2 * shape.num_kv_heads * shape.head_dim
    if engine_cfg.seconds_per_layer is not None:  # configured: no measurement
        return ModelProfile(engine_cfg.seconds_per_layer, layer_params, embed_params, head_params, kv, item)

    layer = body.layers[0].to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # norms (and biases: harmless)
            else:
                p.normal_(0.0, 0.02)
    with torch.device(device):
        rotary = type(body.rotary_emb)(config=config)
    num_layers = int(config.num_hidden_layers)
    stage = StageModel(config, LayerSpan(0, 1, num_layers), embed=None, layers=[layer], rotary=rotary, norm=None,
                       lm_head=None, device=device, dtype=dtype)
    cache = stage.new_cache(context + steps + 1)
    gen = torch.Generator().manual_seed(0)
    hidden = int(config.hidden_size)
    stage.forward(torch.randn(1, context, hidden, generator=gen) * 0.1, 0, cache)
    times = []
    for i in range(steps):
        x = torch.randn(1, 1, hidden, generator=gen) * 0.1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        stage.forward(x, context + i, cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    spl = statistics.median(times[2:] if len(times) > 4 else times)
    if engine_cfg.tensor_parallel > 1 and device.type == "cuda":
        # Measured on one device; a layer split over N runs about N times faster (less its all-reduces).
        # Placement only compares nodes, so the estimate is enough; scripts/bench_tp.py measures the truth.
        spl /= engine_cfg.tensor_parallel
    del stage, cache, layer, skeleton
    log.info("calibration: %.3f ms per layer per token on %s; %.1f MB per layer", spl * 1e3, device,
             layer_params * item / 1e6)
    return ModelProfile(spl, layer_params, embed_params, head_params, kv, item)


def default_memory_budget(device: str, tensor_parallel: int = 1) -> int:
    """Memory offered to placement when ``--memory-budget`` is not given: 80% of the GPU's free memory (of
    every GPU a tensor-parallel span uses), or half of the memory the kernel reports available on a CPU node."""
    dev = torch.device(device)
    if dev.type == "cuda":
        first = dev.index or 0
        free = sum(torch.cuda.mem_get_info(torch.device("cuda", first + r))[0] for r in range(tensor_parallel))
        return int(free * 0.8)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
