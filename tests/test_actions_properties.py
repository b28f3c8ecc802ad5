"""Hypothesis properties of the action layer: round trips, totality, decoy-proof extraction."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.web.actions import (
    ANSWER_PHRASE,
    KEY_NAMES,
    Action,
    ActionKind,
    ActionParseError,
    Reason,
    equivalence_key,
    equivalent,
    extract_action,
    extract_thought,
    format_response,
    parse_action,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
K = ActionKind

ids = st.from_regex(r"[A-Za-z]{0,2}[0-9]{1,6}", fullmatch=True)
free_text = st.text(min_size=1, max_size=40).filter(str.strip)
key = st.one_of(st.sampled_from(KEY_NAMES), st.from_regex(r"[A-Za-z0-9]", fullmatch=True))
keys = st.lists(key, min_size=1, max_size=3).map("+".join)


def actions(text: st.SearchStrategy[str] = free_text) -> st.SearchStrategy[Action]:
    """Every kind of Action, with arbitrary text wherever the grammar allows free text."""
    return st.one_of(
        st.builds(Action, st.sampled_from([K.CLICK, K.HOVER]), ids),
        st.builds(Action, st.just(K.TYPE), ids, text, st.booleans()),
        st.builds(Action, st.just(K.PRESS), text=keys),
        st.builds(Action, st.just(K.SCROLL), text=st.sampled_from(["up", "down"])),
        st.builds(Action, st.just(K.GOTO), text=text),
        st.builds(Action, st.just(K.TAB_FOCUS), st.integers(0, 10**6).map(str)),
        st.builds(Action, st.just(K.STOP), text=st.one_of(st.just(""), st.just("N/A"), text)),
        st.builds(Action, st.sampled_from([K.GO_BACK, K.GO_FORWARD, K.NEW_TAB, K.CLOSE_TAB])),
    )


# Fragments that push arbitrary text down the parser's deeper branches.
FRAGMENTS = st.sampled_from(
    [
        "click", "type", "stop", "scroll", "goto", "press", "tab_focus", "go_back", "hover",
        "[", "]", "(", ")", "[]", "[12]", "[a51]", "[1]", "[0]", "[2]", "`", "```", "```text\n",
        " ", "\n", ":", "**", ".", "press_enter_after=", "direction=", "down", "left", "N/A",
        "http://x.com", ANSWER_PHRASE, "Action:", "Thought:", "Let's think step-by-step.",
    ]
)  # fmt: skip
grammarish = st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=16).map("".join)
any_text = st.one_of(st.text(), grammarish)

DECOYS = st.sampled_from(
    [
        "stop", "Stop.", "before I stop", "the stop action", "stop [N/A] would be wrong here",
        "```stop [N/A]```", "`stop`", "Action: stop [N/A]", "goto [http://onestopmarket.com]",
        "type [5] [stop sign] [1]", "STOP", "click [999]", "scroll [left]", "In summary",
        "the next action", "PREVIOUS ACTION: go_back", "\n\n", "[", "]", "`",
    ]
)  # fmt: skip
reasoning = st.lists(st.one_of(DECOYS, st.text(max_size=20)), max_size=12).map(" ".join)


PHRASE_RE = re.compile(r"in\s+summary\s*,?\s*the\s+next\s+action\s+i\s+will\s+perform\s+is", re.I)


def no_phrase(text: str) -> bool:
    """Reasoning may say anything but the answer phrase itself (that would be a new answer)."""
    return PHRASE_RE.search(text) is None


def no_marker(text: str) -> bool:
    """An action's own text may not close its fence or restate the answer phrase."""
    return "```" not in text and no_phrase(text)


@SETTINGS
@given(actions())
def test_round_trip(action: Action) -> None:
    assert parse_action(action.to_string()) == action
    assert str(action) == action.to_string()


@SETTINGS
@given(
    st.sampled_from(list(K)),
    st.one_of(st.none(), ids, st.text(max_size=8)),
    st.one_of(st.none(), st.text(max_size=20), keys, st.sampled_from(["up", "DOWN", "left"])),
    st.booleans(),
)
def test_any_constructible_action_round_trips(
    kind: ActionKind, target: str | None, text: str | None, press_enter: bool
) -> None:
    """Construction either refuses with ActionParseError or yields a round-tripping action."""
    try:
        action = Action(kind, target, text, press_enter)
    except ActionParseError as error:
        assert error.reason in set(Reason)
    else:
        assert parse_action(action.to_string()) == action


@SETTINGS
@given(actions())
def test_parse_of_canonical_form_is_equivalent_and_idempotent(action: Action) -> None:
    again = parse_action(action.to_string())
    assert equivalent(action, again)
    assert again.to_string() == action.to_string()


@SETTINGS
@given(actions(), actions())
def test_equivalence_is_symmetric_and_implied_by_equality(a: Action, b: Action) -> None:
    assert equivalent(a, b) == equivalent(b, a)
    assert equivalent(a, a)
    if equivalent(a, b):
        assert a.kind == b.kind and equivalence_key(a) == equivalence_key(b)


@SETTINGS
@given(any_text)
def test_parse_action_only_raises_action_parse_error(text: str) -> None:
    try:
        action = parse_action(text)
    except ActionParseError as error:
        assert error.reason in set(Reason)
    else:
        assert parse_action(action.to_string()) == action


@SETTINGS
@given(any_text)
def test_extract_action_only_raises_action_parse_error(text: str) -> None:
    try:
        extract_action(text)
    except ActionParseError as error:
        assert error.reason in set(Reason)
    assert isinstance(extract_thought(text), str)


@SETTINGS
@given(actions(free_text.filter(no_marker)), reasoning.filter(no_phrase))
def test_extract_action_from_canonical_response_with_decoys(action: Action, thought: str) -> None:
    assert extract_action(format_response(thought, action)) == action


@SETTINGS
@given(
    actions(free_text.filter(no_marker)),
    st.from_regex(r"[A-Za-z0-9 ,.$?!']{1,80}", fullmatch=True).filter(str.strip),
)
def test_extract_thought_from_canonical_response(action: Action, thought: str) -> None:
    response = format_response(thought, action)
    assert extract_thought(response) == thought.strip()
