"""The engine facade the rest of swarmd talks to: async methods, torch work on one worker thread.

The event loop never runs tensor code. Sessions are keyed by id; each holds a KV cache whose bytes
are reserved from a :class:`KVBudget` before the tensors are allocated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..config import EngineConfig, ModelConfig
from ..errors import ConfigError, InvalidRequest, StepTimeout
from ..types import LayerSpan, SamplingParams
from .kv_budget import KVBudget, Reservation
from .kv_cache import KVCache, kv_bytes_per_token
from .loader import load_config, load_tokenizer
from .sampling import sample
from .sources import ModelSource, resolve_source
from .stage import StageModel

log = logging.getLogger(__name__)

T = TypeVar("T")
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


def load_model(model_cfg: ModelConfig, engine_cfg: EngineConfig, progress: Progress | None = None) -> LoadedModel:
    """Blocking: resolve the source, read config and tokenizer, load this node's span. Run off the loop."""
    if engine_cfg.threads > 0:
        torch.set_num_threads(engine_cfg.threads)
    device = torch.device(engine_cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {engine_cfg.device} requested but CUDA is not available")
    dtype = parse_dtype(engine_cfg.dtype, device)
    source = resolve_source(model_cfg.source)
    if progress:
        progress("reading config and tokenizer", 0, 1)
    config = load_config(source, model_cfg.cache_dir)
    tokenizer = load_tokenizer(source, model_cfg.cache_dir)
    span = parse_span(engine_cfg.layers, int(config.num_hidden_layers))
    stage = None
    if span is not None:
        started = time.monotonic()
        stage = StageModel.load(
            source, config, span, device=device, dtype=dtype, cache_root=model_cfg.cache_dir,
            seed=model_cfg.seed,
            progress=(lambda done, total: progress("loading weights", done, total)) if progress else None,
        )
        log.info("loaded %s layers %s on %s (%s, %.1f MB) in %.1fs", source.name, span, device,
                 str(dtype).removeprefix("torch."), stage.parameter_bytes() / 1e6, time.monotonic() - started)
    return LoadedModel(source, config, tokenizer, stage)


@dataclass
class _Session:
    cache: KVCache
    reservation: Reservation


class Engine:
    """Runs steps of many sessions on one span. One worker thread owns every tensor operation."""

    def __init__(self, stage: StageModel, cfg: EngineConfig, kv_budget_bytes: int) -> None:
        self.stage = stage
        self.cfg = cfg
        self.budget = KVBudget(kv_budget_bytes)
        self.kv_per_token = kv_bytes_per_token(
            stage.span.count, stage.shape.num_kv_heads, stage.shape.head_dim, stage.dtype
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmd-engine")
        self._sessions: dict[str, _Session] = {}

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.cfg.step_timeout_s)
        except TimeoutError:
            raise StepTimeout(f"engine step took longer than {self.cfg.step_timeout_s}s") from None

    async def open_session(self, session_id: str, capacity: int) -> None:
        """Reserve and allocate a KV cache for ``capacity`` positions; 503-class error when full."""
        if session_id in self._sessions:
            raise InvalidRequest(f"session {session_id} already exists")
        res = await self.budget.reserve(capacity * self.kv_per_token, self.cfg.kv_wait_s)
        try:
            cache = await self._run(self.stage.new_cache, capacity)
        except BaseException:
            await self.budget.release(res)
            raise
        self._sessions[session_id] = _Session(cache, res)

    async def close_session(self, session_id: str) -> None:
        sess = self._sessions.pop(session_id, None)
        if sess is not None:
            await self.budget.release(sess.reservation)

    async def step(
        self, session_id: str, inputs: Sequence[int] | torch.Tensor, start_pos: int,
        sampling: tuple[SamplingParams, int, int] | None = None,
    ) -> torch.Tensor | int:
        """Run positions ``[start_pos, start_pos + len(inputs))`` of a session through this span.

        First span: ``inputs`` are token ids; otherwise hidden states ``[1, S, D]``. The last span
        returns the sampled next token when ``sampling = (params, seed, step)`` is given, else logits.
        """
        sess = self._sessions.get(session_id)
        if sess is None:
            raise InvalidRequest(f"unknown session {session_id}")
        return await self._run(self._step_sync, sess.cache, inputs, start_pos, sampling)

    def _step_sync(
        self, cache: KVCache, inputs: Sequence[int] | torch.Tensor, start_pos: int,
        sampling: tuple[SamplingParams, int, int] | None,
    ) -> torch.Tensor | int:
        x = inputs if isinstance(inputs, torch.Tensor) else torch.tensor([list(inputs)], dtype=torch.long)
        out = self.stage.forward(x, start_pos, cache)
        if sampling is None or self.stage.lm_head is None:
            return out
        params, seed, step = sampling
        return sample(out[0], params, seed, step)

    async def close(self) -> None:
        for sid in list(self._sessions):
            await self.close_session(sid)
        self._pool.shutdown(wait=True, cancel_futures=True)
