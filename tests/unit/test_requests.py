"""api/requests.py: every malformed body is a 400 InvalidRequest that names the field."""

from __future__ import annotations

from typing import Any

import pytest

from swarmd.api.requests import MAX_STOP, parse_body, parse_request
from swarmd.errors import InvalidRequest
from swarmd.types import SamplingParams

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"prompt": "Once upon a time"}


def invalid(kind: str, body: dict[str, Any], param: str | None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(kind, body)  # type: ignore[arg-type]
    assert info.value.status == 400
    assert info.value.param == param
    return info.value


# --- parse_body ------------------------------------------------------------------------------------


def test_parse_body_object() -> None:
    assert parse_body(b'{"prompt": "x", "max_tokens": 3}') == {"prompt": "x", "max_tokens": 3}


@pytest.mark.parametrize("raw", [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"a": 1} trailing'])
def test_parse_body_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON") as info:
        parse_body(raw)
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null"])
def test_parse_body_non_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="JSON object") as info:
        parse_body(raw)
    assert info.value.status == 400


def test_parse_body_deep_nesting_is_a_400() -> None:
    with pytest.raises(InvalidRequest):
        parse_body(b"[" * 100_000)


# --- defaults and accepted forms -------------------------------------------------------------------


def test_chat_defaults() -> None:
    req = parse_request("chat", dict(CHAT))
    assert req.kind == "chat"
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.prompt is None
    assert req.max_tokens is None
    assert req.sampling == SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=None)
    assert req.stop == ()
    assert req.stream is False
    assert req.include_usage is False


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("hello", "hello"), (["hello"], "hello"), ([1, 2, 3], [1, 2, 3]), ([[4, 5]], [4, 5]), ("", "")],
)
def test_prompt_forms(prompt: object, expected: object) -> None:
    req = parse_request("completion", {"prompt": prompt})
    assert req.prompt == expected
    assert req.messages is None


@pytest.mark.parametrize("prompt", [None, 5, [], [[]], ["a", "b"], [1, "a"], [1, True], [[1], [2]], {"p": 1}])
def test_bad_prompt(prompt: object) -> None:
    body = {} if prompt is None else {"prompt": prompt}
    invalid("completion", body, "prompt")


def test_content_parts_are_flattened() -> None:
    msgs = [
        {"role": "system", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    req = parse_request("chat", {"messages": msgs})
    assert req.messages == [{"role": "system", "content": ""}, {"role": "user", "content": "ab"}]


def test_sampling_and_stream_fields() -> None:
    req = parse_request("completion", COMPLETION | {
        "temperature": 0, "top_p": 0.5, "top_k": 40, "seed": 7, "max_tokens": 16, "stop": ["\n", ""],
        "stream": True, "stream_options": {"include_usage": True}, "model": "m", "n": 1, "user": "u",
    })
    assert req.sampling == SamplingParams(temperature=0.0, top_p=0.5, top_k=40, seed=7)
    assert req.sampling.greedy
    assert req.max_tokens == 16
    assert req.stop == ("\n",)
    assert req.stream and req.include_usage
    assert req.model == "m"


def test_stop_as_single_string() -> None:
    assert parse_request("chat", CHAT | {"stop": "END"}).stop == ("END",)


def test_max_completion_tokens_overrides_max_tokens_for_chat() -> None:
    assert parse_request("chat", CHAT | {"max_tokens": 5, "max_completion_tokens": 9}).max_tokens == 9
    assert parse_request("chat", CHAT | {"max_tokens": 5}).max_tokens == 5


def test_max_completion_tokens_is_unknown_for_completions() -> None:
    invalid("completion", COMPLETION | {"max_completion_tokens": 9}, "max_completion_tokens")


@pytest.mark.parametrize(("seed", "expected"), [(0, 0), (2**63 - 1, 2**63 - 1), (-1, 2**63 - 1), (2**63, 0)])
def test_seed_is_folded_into_63_bits(seed: int, expected: int) -> None:
    assert parse_request("chat", CHAT | {"seed": seed}).sampling.seed == expected


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, "1", True, 1.5])
def test_bad_seed(seed: object) -> None:
    invalid("chat", CHAT | {"seed": seed}, "seed")


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_field_is_named() -> None:
    err = invalid("chat", CHAT | {"temprature": 0.5}, "temprature")
    assert "temprature" in err.message


def test_completion_field_is_unknown_in_chat() -> None:
    invalid("chat", CHAT | {"prompt": "x"}, "prompt")
    invalid("completion", COMPLETION | {"messages": []}, "messages")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "10"), ("max_tokens", True), ("max_tokens", 10.0),
        ("max_tokens", 0), ("max_tokens", -3),
        ("temperature", "hot"), ("temperature", True), ("temperature", -0.1), ("temperature", 2.5),
        ("top_p", 1.5), ("top_p", -0.5), ("top_k", -1), ("top_k", "5"),
        ("stream", "yes"), ("stream", 1),
        ("stop", 5), ("stop", [5]), ("stop", ["a", None]), ("stop", ["s"] * (MAX_STOP + 1)),
        ("n", 2), ("logit_bias", {"1": 5}), ("presence_penalty", 0.5), ("frequency_penalty", -1),
        ("model", 3), ("user", 3),
    ],
)
def test_bad_common_field(field: str, value: object) -> None:
    invalid("chat", CHAT | {field: value}, field)
    invalid("completion", COMPLETION | {field: value}, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [("echo", True), ("best_of", 3), ("suffix", "tail"), ("logprobs", 5)],
)
def test_unsupported_completion_options(field: str, value: object) -> None:
    err = invalid("completion", COMPLETION | {field: value}, field)
    assert "not supported" in err.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("logprobs", True), ("top_logprobs", 3), ("response_format", {"type": "json_object"}),
     ("max_completion_tokens", 0), ("max_completion_tokens", "5")],
)
def test_unsupported_or_bad_chat_options(field: str, value: object) -> None:
    invalid("chat", CHAT | {field: value}, field)


def test_text_response_format_is_accepted() -> None:
    assert parse_request("chat", CHAT | {"response_format": {"type": "text"}}).messages is not None


@pytest.mark.parametrize(
    "messages",
    [
        None, [], "hi", {"role": "user", "content": "hi"}, ["hi"],
        [{"role": "bot", "content": "hi"}], [{"content": "hi"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": [{"type": "text", "text": 5}]}],
        [{"role": "user", "content": ["plain"]}],
    ],
)
def test_bad_messages(messages: object) -> None:
    body = {} if messages is None else {"messages": messages}
    invalid("chat", body, "messages")


def test_bad_message_error_names_the_index() -> None:
    err = invalid("chat", {"messages": [{"role": "user", "content": "ok"}, {"role": "robot"}]}, "messages")
    assert "messages[1]" in err.message


def test_stream_options_without_stream() -> None:
    invalid("chat", CHAT | {"stream_options": {"include_usage": True}}, "stream_options")
    invalid("chat", CHAT | {"stream": False, "stream_options": {"include_usage": True}}, "stream_options")


@pytest.mark.parametrize("so", [["include_usage"], {"include_usage": True, "extra": 1}])
def test_bad_stream_options(so: object) -> None:
    invalid("chat", CHAT | {"stream": True, "stream_options": so}, "stream_options")


def test_stream_options_include_usage_must_be_boolean() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request("chat", CHAT | {"stream": True, "stream_options": {"include_usage": "yes"}})
    assert info.value.status == 400
