"""The embedded default model end to end: converted once per span, cached, and exact against transformers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import NodeThread, node_config, shared_cache_dir, start_node, uds_client

from swarmd.engine import gguf_cache
from swarmd.engine.sources import EMBEDDED_FILE, EMBEDDED_NAME, embedded_gguf_path

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smol() -> Iterator[NodeThread]:
    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    node = start_node(node_config(tmp, EMBEDDED_NAME), timeout=600)
    yield node
    node.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_answer_is_coherent(smol: NodeThread) -> None:
    with uds_client(smol.socket) as c:
        r = c.post("/v1/chat/completions", json={
            "model": EMBEDDED_NAME, "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 30, "temperature": 0})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_greedy_tokens_equal_transformers_generate_on_the_gguf(smol: NodeThread) -> None:
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=EMBEDDED_FILE, dtype=torch.float32)
    tok = smol.node.codec.tokenizer
    prompt = "Write one sentence about distributed computing:"
    ids = tok(prompt)["input_ids"]
    out = ref.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids):].tolist()
    if 2 in out:
        out = out[: out.index(2)]
    with uds_client(smol.socket) as c:
        r = c.post("/v1/completions", json={"prompt": ids, "max_tokens": 40, "temperature": 0}).json()
    assert r["usage"]["completion_tokens"] == len(out)
    assert r["choices"][0]["text"] == tok.decode(out, skip_special_tokens=True)


def test_conversion_is_cached_per_span(smol: NodeThread) -> None:
    cache_dir = gguf_cache.cache_dir_for(shared_cache_dir(), embedded_gguf_path())
    assert (cache_dir / "config.json").is_file() and (cache_dir / "tokenizer.json").is_file()
    keys = smol.node.loaded.stage.weight_keys
    assert "lm_head.weight" not in keys  # tied: the embedding matrix is loaded once and shared
    assert gguf_cache.span_file(cache_dir, 0, 30, torch.float32, keys).is_file()
