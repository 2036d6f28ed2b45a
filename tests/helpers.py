"""Test helpers: swarmd nodes on real Unix sockets, run in a thread with their own event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path

from swarmd.config import ApiConfig, EngineConfig, ModelConfig, NetConfig, NodeConfig

REPO = Path(__file__).resolve().parents[1]



def shared_cache_dir() -> Path:
    """Converted GGUF spans live here across test runs (CI converts SmolLM2 once)."""
    return Path(os.environ.get("SWARMD_TEST_CACHE", REPO / ".cache" / "swarmd"))


class NodeThread:
    """A real swarmd Node on its own event loop in a thread, serving on a Unix socket."""

    def __init__(self, cfg: NodeConfig) -> None:
        from swarmd.node import Node

        self.cfg = cfg
        self.node = Node(cfg)
        self.socket = str(cfg.api.socket)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def amain() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.node.run(self._stop)

        try:
            asyncio.run(amain())
        except BaseException as exc:  # reported to the test through .error
            self.error = exc
            self._ready.set()

    def start(self, timeout: float = 120.0) -> NodeThread:
        import time

        self._thread.start()
        self._ready.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            if self.node.can_serve() or (self.node.loaded is not None and self.node.state.value != "starting"):
                return self
            time.sleep(0.05)
        raise TimeoutError("node did not finish loading")

    def call(self, coro_fn, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        """Run ``coro_fn()`` on the node's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def node_config(tmp: Path, model: str, **engine: object) -> NodeConfig:
    return NodeConfig(
        node_id="test-node",
        drain_timeout_s=2.0,
        model=ModelConfig(source=model, cache_dir=shared_cache_dir()),
        engine=replace(EngineConfig(threads=2), **engine),  # type: ignore[arg-type]
        api=ApiConfig(socket=tmp / "swarmd.sock", max_body_bytes=64 * 1024, max_sessions=8),
        net=NetConfig(listen="127.0.0.1:0", insecure=True, mdns=False),  # tests never multicast on the host
    )


def start_node(cfg: NodeConfig, timeout: float = 120.0) -> NodeThread:
    return NodeThread(cfg).start(timeout)


def uds_client(socket_path: str, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://swarmd", timeout=timeout)


def memory_budgets(model: Path) -> tuple[int, int]:
    """``--memory-budget`` values for a saved model: about half of it (two such nodes make a pipeline, and
    no node can hold all layers) and all of it, as placement counts memory (float32, KV reserve)."""
    from transformers import AutoConfig

    from swarmd.engine.profile import profile_model
    from swarmd.membership.rebalance import model_shape
    from swarmd.node import KV_RESERVE_TOKENS

    cfg = AutoConfig.from_pretrained(model)
    layers = int(cfg.num_hidden_layers)
    p = profile_model(cfg, EngineConfig(seconds_per_layer=1e-3))
    shape = model_shape(layers, p.params_per_layer, p.embed_params, p.head_params, p.kv_per_token_layer,
                        min(KV_RESERVE_TOKENS, int(cfg.max_position_embeddings)))
    half = max(shape.span_bytes((0, layers // 2)), shape.span_bytes((layers // 2, layers)))
    return half + shape.bytes_per_layer // 2, shape.span_bytes((0, layers)) + shape.bytes_per_layer


def stream_completion(sock: Path, body: dict, result: dict) -> None:  # type: ignore[type-arg]
    """Stream ``POST /v1/completions`` on a Unix socket into ``result``: ``text`` (the streamed text) or
    ``error`` (anything raised, including an in-band error event), and ``done_at`` (monotonic). For a thread."""
    import json
    import time

    import httpx

    text: list[str] = []
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=300) as c:
            with c.stream("POST", "http://x/v1/completions", json=dict(body, stream=True)) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise AssertionError(chunk)
                        text.extend(choice["text"] for choice in chunk["choices"])
        result["text"] = "".join(text)
    except BaseException as exc:  # reported by the test
        result["error"] = exc
    result["done_at"] = time.monotonic()
