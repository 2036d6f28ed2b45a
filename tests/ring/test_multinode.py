"""Rings of 1-4 real daemon processes over loopback give transformers' greedy tokens, from any entry."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from cluster import Cluster, even_spans
from helpers import shared_cache_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.ring
PROMPT = "The quick brown fox jumps over the lazy dog. What is the capital of France?"


def client(sock: Path) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120)
    return openai.OpenAI(base_url="http://swarmd/v1", api_key="unused", http_client=http)


def reference_ids(model, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:  # type: ignore[no-untyped-def]
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)[0, len(prompt_ids):].tolist()
    for i, t in enumerate(out):
        if t in eos:
            return out[:i]
    return out


@pytest.fixture()
def tmpdir_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 4])
def test_tiny_ring_matches_generate_from_every_entry(n_nodes: int, tiny_models: dict[str, Path],
                                                      tmpdir_short: Path) -> None:
    model_dir = tiny_models["llama"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    want = tok.decode(reference_ids(ref, ids, 40, {2}), skip_special_tokens=True)
    cluster = Cluster(tmpdir_short, str(model_dir), even_spans(4, n_nodes), shared_cache_dir()).start()
    try:
        for d in cluster.daemons:
            got = client(d.sock).completions.create(model="tiny-llama", prompt=ids, max_tokens=40, temperature=0)
            assert got.choices[0].text == want, (d.name, cluster.logs())
        streamed = client(cluster.daemons[-1].sock).completions.create(
            model="tiny-llama", prompt=ids, max_tokens=40, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == want
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(cluster.daemons[0].sock))) as c:
            doc = c.get("http://x/v1/swarm/status").json()
        assert doc["ring"] == [f"node{i}" for i in range(n_nodes)]
        assert {p["node_id"] for p in doc["peers"]} == {f"node{i}" for i in range(1, n_nodes)}
        assert all(p["state"] == "alive" and p["connection"] == "up" for p in doc["peers"])
        assert [c["layers"] for c in doc["coverage"]] == [[int(x) for x in s.split(":")]
                                                          for s in even_spans(4, n_nodes)]
    finally:
        cluster.stop()


def test_entry_without_layers_and_qwen2_ring(tiny_models: dict[str, Path], tmpdir_short: Path) -> None:
    """A node holding no layers is a full entry; a Qwen2 ring (biases) matches generate too."""
    model_dir = tiny_models["qwen2"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    want = reference_ids(ref, ids, 30, {2})
    cluster = Cluster(tmpdir_short, str(model_dir), ["0:3", "3:4", "none"], shared_cache_dir()).start()
    try:
        got = client(cluster.daemons[2].sock).completions.create(model="tiny-qwen2", prompt=ids, max_tokens=30,
                                                                 temperature=0)
        assert got.choices[0].text == tok.decode(want, skip_special_tokens=True)
        assert got.usage is not None and got.usage.completion_tokens == len(want)
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.parametrize("n_nodes", [2, 3])
def test_smollm2_ring_matches_generate(n_nodes: int, tmpdir_short: Path, smol_reference) -> None:  # type: ignore[no-untyped-def]
    ids, want_ids, tok = smol_reference
    cluster = Cluster(tmpdir_short, "smollm2-135m-instruct", even_spans(30, n_nodes), shared_cache_dir())
    cluster.start(timeout=600)
    try:
        for d in (cluster.daemons[0], cluster.daemons[-1]):
            got = client(d.sock).completions.create(model="smollm2-135m-instruct", prompt=ids,
                                                    max_tokens=len(want_ids) + 8, temperature=0)
            assert got.usage is not None and got.usage.completion_tokens == len(want_ids)
            assert got.choices[0].text == tok.decode(want_ids, skip_special_tokens=True)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def smol_reference():  # type: ignore[no-untyped-def]
    from swarmd.engine.sources import EMBEDDED_FILE, embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=EMBEDDED_FILE)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=EMBEDDED_FILE, dtype=torch.float32)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids, reference_ids(ref, ids, 40, {2}), tok


def test_stage_without_kv_memory_gives_503(tiny_models: dict[str, Path], tmpdir_short: Path) -> None:
    """A stage that cannot allocate KV memory answers with an error the entry turns into 503 + Retry-After."""
    cluster = Cluster(tmpdir_short, str(tiny_models["llama"]), ["0:2", "2:4"], shared_cache_dir())
    # 2 layers x 2 heads x 16 dims x 4 B x 2 = 512 B/token: 12 KiB is 24 tokens, one page of 16.
    cluster.daemons[1].args += ["--kv-budget", "12KiB"]
    cluster.start()
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(cluster.daemons[0].sock)), timeout=30) as c:
            r = c.post("http://x/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 20})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "kv_budget_exceeded" and int(r.headers["Retry-After"]) >= 1
            small = c.post("http://x/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0})
            assert small.status_code == 200  # fits in one page: the node keeps serving
            deadline = time.monotonic() + 5  # the session's close reaches the stage right after the answer
            while (doc := c.get("http://x/v1/swarm/status").json())["kv_cache"]["used_bytes"] and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
        assert doc["kv_cache"]["used_bytes"] == 0 and doc["sessions"]["as_stage"] == 0
    finally:
        cluster.stop()


def test_killed_stage_fails_the_stream_promptly_and_frees_caches(tiny_models: dict[str, Path],
                                                                  tmpdir_short: Path) -> None:
    """Until replay exists ([4/8]) a lost stage must end the stream with an error at once, never hang."""
    import json
    import signal
    import time

    cluster = Cluster(tmpdir_short, str(tiny_models["llama"]), ["0:2", "2:4"], shared_cache_dir()).start()
    try:
        events: list[str] = []
        body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(cluster.daemons[0].sock)), timeout=60) as c:
            full = c.post("http://x/v1/completions", json=body).json()
            assert full["usage"]["completion_tokens"] > 50  # greedy: long enough to interrupt, every run
            with c.stream("POST", "http://x/v1/completions", json=dict(body, stream=True)) as r:
                started = None
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                    if len(events) == 5:
                        cluster.daemons[1].signal(signal.SIGKILL)
                        started = time.monotonic()
            assert started is not None and time.monotonic() - started < 15
            assert events[-1] == "[DONE]"
            assert "error" in json.loads(events[-2]), events[-3:]
            assert len(events) < full["usage"]["completion_tokens"] + 2
            deadline = time.monotonic() + 5  # the failed session's close reaches the local stage right after
            while (doc := c.get("http://x/v1/swarm/status").json())["kv_cache"]["used_bytes"] and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            assert doc["kv_cache"]["used_bytes"] == 0
            assert c.get("http://x/health").status_code == 503  # layers 2:4 are gone
    finally:
        cluster.stop()
