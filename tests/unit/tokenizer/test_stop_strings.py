"""Stop strings hold back possible starts, cut at the first match, and flush at a normal finish."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.text_options import TextOptions
from services.tokenizer.request_state import RequestState, step_requests
from services.tokenizer.stop_strings import StopStringMatcher
from services.tokenizer.tokenizer import TextTokenizer


def _feed_all(matcher: StopStringMatcher, deltas: list[str]) -> tuple[list[str], str | None]:
    out, stop = [], None
    for d in deltas:
        r = matcher.feed(d)
        out.append(r.text)
        stop = stop or r.stop_string
    return out, stop


def test_text_that_may_start_a_stop_string_is_held_until_decided() -> None:
    m = StopStringMatcher(["STOP"])
    assert _feed_all(m, ["abc S", "T", "x"]) == (["abc ", "", "STx"], None)
    assert m.held == ""


def test_output_ends_before_a_stop_string_spanning_several_deltas() -> None:
    m = StopStringMatcher(["</end>"])
    assert _feed_all(m, ["hello <", "/e", "nd> tail"]) == (["hello ", "", ""], "</end>")
    assert m.feed("more").text == "" and m.flush() == ""


def test_include_stop_str_in_output_keeps_the_stop_string() -> None:
    m = StopStringMatcher(["</end>"], include_stop=True)
    assert _feed_all(m, ["hello <", "/end> tail"]) == (["hello ", "</end>"], "</end>")


def test_stop_string_inside_one_delta_and_earliest_of_several_wins() -> None:
    m = StopStringMatcher(["world", "lo"])
    assert _feed_all(m, ["hello world"]) == (["hel"], "lo")
    tie = StopStringMatcher(["ab", "abc"])
    assert _feed_all(tie, ["xabcd"]) == (["x"], "ab")


def test_held_text_is_flushed_at_a_normal_finish() -> None:
    m = StopStringMatcher(["END", "東京タワー"])
    assert _feed_all(m, ["to 東京"]) == (["to "], None)
    assert m.flush() == "東京"


def test_multibyte_stop_strings_match_on_characters() -> None:
    m = StopStringMatcher(["👋🏽"])
    assert _feed_all(m, ["hi 👋", "🏽 bye"]) == (["hi ", ""], "👋🏽")


def test_empty_stop_string_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        StopStringMatcher(["ok", ""])


def _run(tok: TextTokenizer, text: str, options: TextOptions, per_step: int = 1) -> tuple[str, str | None, int]:
    state = RequestState.create(tok, "r1", 7, options)
    ids = tok.encode(text, add_special_tokens=False)
    out, stop, firsts = "", None, []
    for i in range(0, len(ids), per_step):
        (step,) = step_requests(tok, [(state, ids[i:i + per_step])])
        out += step.text
        stop = stop or step.stop_string
        firsts.append(step.num_prompt_tokens)
    final = state.finish(tok)
    assert firsts[0] == 7 and all(f is None for f in firsts[1:]) and final.num_prompt_tokens is None
    return out + final.text, stop or final.stop_string, state.num_output_tokens


def test_request_state_stops_on_a_string_spanning_tokens(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["llama3"])
    text = "The river keeps moving while the city sleeps"
    assert _run(tok, text, TextOptions(stop=("city sl",)))[:2] == ("The river keeps moving while the ", "city sl")
    assert _run(tok, text, TextOptions(stop=("city sl",), include_stop_str_in_output=True))[:2] == (
        "The river keeps moving while the city sl", "city sl")


def test_request_state_stops_on_a_string_inside_one_token(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["llama3"])
    ids = tok.encode(" keeps", add_special_tokens=False)
    assert len(ids) == 1  # one token holds the whole word
    assert _run(tok, "The river keeps moving", TextOptions(stop=("eep",)))[:2] == ("The river k", "eep")


def test_request_state_without_stop_strings_returns_the_full_text_and_flushes(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["mistral"])
    text = "東京の朝はとても静かで 👩‍👩‍👧‍👦"
    ids = tok.encode(text, add_special_tokens=False)
    assert _run(tok, text, TextOptions(stop=("静かでない",)), per_step=2) == (tok.decode(ids), None, len(ids))


def test_tokens_after_a_stop_string_are_dropped(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["chatml"])
    state = RequestState.create(tok, "r", 3, TextOptions(stop=("city",)))
    first, = step_requests(tok, [(state, tok.encode("the city", add_special_tokens=False))])
    later, = step_requests(tok, [(state, tok.encode(" sleeps", add_special_tokens=False))])
    assert (first.text, first.stop_string, later.text, later.token_ids) == ("the ", "city", "", [])
    assert state.finish(tok).text == ""


def test_echo_prompt_sends_the_prompt_text_first(model_dirs: dict[str, Path]) -> None:
    tok = TextTokenizer.from_dir(model_dirs["chatml"])
    state = RequestState.create(tok, "r", 2, TextOptions(echo_prompt=True))
    state.prompt_text = "Q: "
    step, = step_requests(tok, [(state, tok.encode("A", add_special_tokens=False))])
    assert step.text == "Q: A"
