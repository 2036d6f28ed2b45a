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
from ..types import LayerSpan, SamplingParams, TensorBlob
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
    """Blocking: load the weights of ``span`` only. Run off the loop."""
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

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn, *args)
        try:
            async with asyncio.timeout(self.cfg.step_timeout_s):
                return await fut  # cancelling the wrapper future leaves the running step to finish
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

    async def forward(
        self, session_id: str, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
        sampling: tuple[SamplingParams, int, int] | None,
    ) -> int | TensorBlob | None:
        """One step with wire-format inputs and outputs (what a ring stage does).

        Returns the sampled token (last span, ``sampling`` given), hidden states to forward (not last),
        or None (last span, a prefill chunk that samples nothing).
        """
        sess = self._sessions.get(session_id)
        if sess is None:
            raise InvalidRequest(f"unknown session {session_id}")
        return await self._run(self._forward_sync, sess.cache, tokens, hidden, start_pos, sampling)

    def _forward_sync(
        self, cache: KVCache, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
        sampling: tuple[SamplingParams, int, int] | None,
    ) -> int | TensorBlob | None:
        stage = self.stage
        if stage.embed is not None:
            if hidden is not None or not tokens:
                raise InvalidRequest("the first stage takes token ids, not hidden states")
            if any(not 0 <= t < stage.vocab_size for t in tokens):
                raise InvalidRequest("token id outside the vocabulary")
            x = torch.tensor([list(tokens)], dtype=torch.long)
        else:
            if hidden is None or tokens:
                raise InvalidRequest(f"stage {stage.span} takes hidden states, not token ids")
            x = blob_to_tensor(hidden, stage.hidden_size)
        out = stage.forward(x, start_pos, cache)
        if stage.lm_head is None:
            return tensor_to_blob(out)
        if sampling is None:
            return None
        params, seed, step = sampling
        return sample(out[0], params, seed, step)

    async def close(self) -> None:
        for sid in list(self._sessions):
            await self.close_session(sid)
        self._pool.shutdown(wait=True, cancel_futures=True)


_WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def blob_to_tensor(blob: TensorBlob, hidden_size: int) -> torch.Tensor:
    """Hidden states off the wire: shape ``[1, S, hidden_size]``, finite values only."""
    if len(blob.shape) != 3 or blob.shape[0] != 1 or blob.shape[2] != hidden_size:
        raise InvalidRequest(f"hidden states of shape {list(blob.shape)}; this model needs [1, S, {hidden_size}]")
    t = torch.frombuffer(bytearray(blob.data), dtype=_WIRE_DTYPES[blob.dtype]).view(blob.shape)
    if not bool(torch.isfinite(t).all()):
        raise InvalidRequest("hidden states contain NaN or Inf")
    return t


def tensor_to_blob(t: torch.Tensor) -> TensorBlob:
    """Hidden states onto the wire: raw little-endian bytes in the stage's dtype."""
    t = t.detach().to("cpu").contiguous()
    name = str(t.dtype).removeprefix("torch.")
    return TensorBlob(name, tuple(t.shape), t.view(torch.uint8).numpy().tobytes())
