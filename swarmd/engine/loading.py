"""Loading a model: resolve the source, read config and tokenizer, load the weights of one span.

Blocking functions, run off the event loop. With ``tensor_parallel`` > 1 a span is split over several
devices (``tp_stage.TPStage``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import EngineConfig, ModelConfig
from ..errors import ConfigError
from ..types import LayerSpan
from .loader import load_config, load_tokenizer
from .sources import ModelSource, resolve_source
from .stage import StageModel

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
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
