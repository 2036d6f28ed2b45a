"""The official openai client and curl, both over the Unix socket, get correct answers."""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest
from helpers import NodeThread, uds_client


def client(node: NodeThread) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=node.socket), timeout=60)
    return openai.OpenAI(base_url="http://swarmd/v1", api_key="unused", http_client=http)


def test_models_lists_the_served_model(llama_node: NodeThread) -> None:
    ids = [m.id for m in client(llama_node).models.list()]
    assert ids == ["tiny-llama"]


def test_chat_non_streaming_and_streaming_agree(llama_node: NodeThread) -> None:
    c = client(llama_node)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    full = c.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    text = full.choices[0].message.content
    assert text
    assert full.usage is not None and full.usage.completion_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(c.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=24, temperature=0,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_non_streaming_and_streaming_agree(llama_node: NodeThread) -> None:
    c = client(llama_node)
    full = c.completions.create(model="tiny-llama", prompt="The quick brown fox", max_tokens=20, temperature=0)
    assert full.object == "text_completion"
    assert full.usage is not None and full.usage.completion_tokens == 20
    assert full.choices[0].finish_reason == "length"
    parts = list(c.completions.create(model="tiny-llama", prompt="The quick brown fox", max_tokens=20,
                                      temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == full.choices[0].text


def test_seeded_sampling_is_reproducible(llama_node: NodeThread) -> None:
    c = client(llama_node)
    kw = dict(model="tiny-llama", prompt="Hello", max_tokens=24, temperature=1.0, top_p=0.9)
    a = c.completions.create(seed=1234, **kw).choices[0].text  # type: ignore[call-overload]
    b = c.completions.create(seed=1234, **kw).choices[0].text  # type: ignore[call-overload]
    others = {c.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}  # type: ignore[call-overload]
    assert a == b
    assert len(others | {a}) > 1


def test_stop_string_ends_generation(llama_node: NodeThread) -> None:
    c = client(llama_node)
    base = c.completions.create(model="tiny-llama", prompt="The quick", max_tokens=30, temperature=0)
    text = base.choices[0].text
    assert len(text) > 4
    stop = text[2:4]
    cut = c.completions.create(model="tiny-llama", prompt="The quick", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


@pytest.mark.parametrize("stream", [False, True])
def test_curl_over_unix_socket(llama_node: NodeThread, stream: bool) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0, "stream": stream}
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--unix-socket", llama_node.socket, "-H",
         "Content-Type: application/json", "-d", json.dumps(body), "http://localhost/v1/chat/completions"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    with uds_client(llama_node.socket) as c:
        want = c.post("/v1/chat/completions", json=dict(body, stream=False)).json()["choices"][0]["message"]
    if stream:
        events = [ln[6:] for ln in out.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    else:
        text = json.loads(out)["choices"][0]["message"]["content"]
    assert text == want["content"]


def test_health_and_status_document(llama_node: NodeThread) -> None:
    with uds_client(llama_node.socket) as c:
        assert c.get("/health").json() == {"status": "ok"}
        doc = c.get("/v1/swarm/status").json()
    assert doc["node_id"] == "test-node"
    assert doc["state"] == "serving"
    assert doc["model"] == {"name": "tiny-llama", "num_layers": 4}
    assert doc["layers"] == [0, 4]
    assert doc["peers"] == []
    assert doc["coverage"] == [{"layers": [0, 4], "replicas": 1}]
    assert doc["ring"] == ["test-node"]


def test_concurrent_requests_share_forwards_and_each_gets_its_own_answer(llama_node: NodeThread) -> None:
    """Continuous batching through the whole daemon: the texts equal the sequential ones, and the status
    document shows steps of different sessions sharing forwards."""
    import concurrent.futures

    prompts = [[5 + i, 17, 42 + 3 * i, 99, 3] for i in range(8)]

    def ask(prompt: list[int]) -> str:
        with uds_client(llama_node.socket) as c:
            r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 24, "temperature": 0})
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["text"])

    alone = [ask(p) for p in prompts]
    with uds_client(llama_node.socket) as c:
        before = c.get("/v1/swarm/status").json()["batching"]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    with uds_client(llama_node.socket) as c:
        after = c.get("/v1/swarm/status").json()["batching"]
    assert together == alone
    steps, forwards = after["steps"] - before["steps"], after["forwards"] - before["forwards"]
    assert steps >= 8 * 24 and forwards < steps  # some forwards carried several sessions' steps
