"""ring/textstream.py: deltas never show a stop string, nor half a UTF-8 character, and add up to the text."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from swarmd.ring.textstream import TextStream


class Pieces:
    """Token id i decodes to pieces[i] (bytes); the text is decoded with errors="replace" like a tokenizer."""

    def __init__(self, pieces: Sequence[str | bytes]) -> None:
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]

    def __call__(self, ids: Sequence[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def run(pieces: Sequence[str | bytes], stop: Sequence[str] = ()) -> tuple[TextStream, list[str]]:
    ts = TextStream(Pieces(pieces), stop)
    deltas = []
    for i in range(len(pieces)):
        deltas.append(ts.push(i))
        if ts.stopped:
            break
    deltas.append(ts.flush())
    return ts, deltas


def test_plain_stream_emits_each_token_at_once() -> None:
    ts, deltas = run(["Hello", ",", " wor", "ld", "!"])
    assert deltas == ["Hello", ",", " wor", "ld", "!", ""]
    assert ts.final_text == "Hello, world!"
    assert not ts.stopped


def test_stop_string_split_over_tokens_is_never_emitted() -> None:
    ts, deltas = run(["The answer", " is 4", ".\n", "#", "#", "#", " next"], stop=["\n###"])
    assert ts.stopped
    assert "".join(deltas) == "The answer is 4."
    assert ts.final_text == "The answer is 4."
    assert all("\n" not in d and "#" not in d for d in deltas)
    assert deltas[-1] == ""  # flush after a stop releases nothing


def test_text_before_stop_inside_the_stopping_token_is_emitted() -> None:
    ts = TextStream(Pieces(["ab", "cSTOPde"]), ["STOP"])
    assert ts.push(0) == "ab"
    assert ts.push(1) == "c"
    assert ts.stopped
    assert ts.push(0) == ""  # nothing more once stopped
    assert ts.flush() == ""


def test_earliest_of_several_stop_strings_wins() -> None:
    ts, deltas = run(["x", "yB", "A", "z"], stop=["AZ", "BA", "yBAz"])
    assert ts.stopped
    assert "".join(deltas) == "xy"


def test_possible_stop_prefix_is_held_then_released() -> None:
    ts = TextStream(Pieces(["one", " E", "N", "X", " two E", "N"]), ["END"])
    assert ts.push(0) == "one"
    assert ts.push(1) == " "  # "E" may start "END"
    assert ts.push(2) == ""  # "EN" still may
    assert ts.push(3) == "ENX"  # no longer
    assert ts.push(4) == " two "
    assert ts.push(5) == ""
    assert not ts.stopped
    assert ts.flush() == "EN"  # generation ended: the prefix was not a stop after all
    assert ts.final_text == "one ENX two EN"


def test_multibyte_character_split_over_two_tokens() -> None:
    euro = "€".encode()  # 3 bytes
    ts = TextStream(Pieces([b"price " + euro[:1], euro[1:2], euro[2:] + b"5"]))
    assert ts.push(0) == ""  # held: the text ends in a half character
    assert ts.push(1) == ""
    assert ts.push(2) == "price €5"
    assert "\ufffd" not in ts.final_text


def test_multibyte_character_emitted_whole_with_stop_strings() -> None:
    ts = TextStream(Pieces(["a", b"\xc3", b"\xa9", "b"]), ["zz"])
    assert [ts.push(i) for i in range(4)] == ["a", "", "é", "b"]


def test_flush_releases_a_character_that_never_completed() -> None:
    ts = TextStream(Pieces(["ok", b"\xe2\x82"]))
    assert ts.push(0) == "ok"
    assert ts.push(1) == ""
    assert ts.flush() == "\ufffd"


def test_stop_string_made_of_multibyte_characters() -> None:
    stop = "。"  # e3 80 82
    ts, deltas = run(["句", b"\xe3", b"\x80", b"\x82", "after"], stop=[stop])
    assert ts.stopped
    assert "".join(deltas) == "句"


def test_stop_completed_by_a_token_ending_in_half_a_character() -> None:
    # "。" = e3 80 82, "你" = e4 bd a0: token b"\x82\xe4" completes the stop and starts the next character.
    ts, deltas = run(["a", b"\xe3\x80", b"\x82\xe4"], stop=["。"])
    assert "".join(deltas) == "a"  # actual: "a。\ufffd" (flush() releases the stop string)


@given(st.lists(st.text(alphabet="abS!", min_size=1, max_size=4), max_size=20))
def test_deltas_add_up_and_never_contain_the_stop(pieces: list[str]) -> None:
    stop = "S!"
    ts, deltas = run(pieces, stop=[stop])
    full = "".join(pieces)
    joined = "".join(deltas)
    assert joined == ts.final_text
    if stop in full:
        assert ts.stopped
        assert joined == full[: full.index(stop)]
    else:
        assert not ts.stopped
        assert joined == full
