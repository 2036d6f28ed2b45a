"""Greedy output through the real API equals transformers ``generate`` on the same tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import node_config, start_node, uds_client
from transformers import AutoModelForCausalLM, AutoTokenizer

ARCHES = ["llama", "qwen2", "mistral"]
N_NEW = 48


def reference(model_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    ids = out[0, len(prompt_ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos_set = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(ids):  # generate keeps the eos token; the API stops before it
        if t in eos_set:
            return ids[:i]
    return ids


@pytest.fixture(scope="module", params=ARCHES)
def served(request: pytest.FixtureRequest, tiny_models: dict[str, Path]):  # type: ignore[no-untyped-def]
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    node = start_node(node_config(tmp, str(tiny_models[request.param])))
    yield request.param, tiny_models[request.param], node
    node.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_completion_tokens_match_generate(served) -> None:  # type: ignore[no-untyped-def]
    arch, model_dir, node = served
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tok("The quick brown fox jumps over the lazy dog. What is the capital of France?")["input_ids"]
    expected = reference(model_dir, prompt_ids, N_NEW)
    with uds_client(node.socket) as c:
        r = c.post("/v1/completions", json={"prompt": prompt_ids, "max_tokens": N_NEW, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == len(expected), arch
    assert body["choices"][0]["text"] == tok.decode(expected, skip_special_tokens=True)
    assert body["choices"][0]["finish_reason"] == ("length" if len(expected) == N_NEW else "stop")


def test_chat_stream_matches_generate(served) -> None:  # type: ignore[no-untyped-def]
    arch, model_dir, node = served
    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "Hello, world! What is the capital of France?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    expected = tok.decode(reference(model_dir, prompt_ids, 32), skip_special_tokens=True)
    deltas = []
    with uds_client(node.socket) as c, c.stream(
        "POST", "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 32, "temperature": 0, "stream": True},
    ) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        for choice in json.loads(ln[6:])["choices"]:
            deltas.append(choice["delta"].get("content") or "")
    assert "".join(deltas) == expected, arch


def test_long_prompt_is_prefilled_in_chunks_with_same_output(served) -> None:  # type: ignore[no-untyped-def]
    """A prompt longer than one prefill chunk goes through the masked (rewind-free append) path."""
    from swarmd.ring.generation import Generation
    from swarmd.types import GenerationRequest, SamplingParams

    arch, model_dir, node = served
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tok(" ".join(["The quick brown fox jumps over the lazy dog."] * 6))["input_ids"]
    expected = reference(model_dir, prompt_ids, 16)

    async def run() -> list[int]:
        req = GenerationRequest(tuple(prompt_ids), 16, SamplingParams(temperature=0), (), node.node.codec.eos_ids)
        gen = Generation(node.node.entry, req, node.node.codec.decode, prefill_chunk=7)
        async with gen:
            await gen.run()
        return gen.history[len(prompt_ids):]

    assert node.call(run) == expected, arch
