"""Pulling (thought, action) out of whole policy responses.

``tests/data/model_responses.jsonl`` is the table of realistic and malformed responses: each row
has ``response`` and either the expected canonical ``action`` or the expected ``error`` reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from websynthesis.web.actions import (
    ANSWER_PHRASE,
    ActionKind,
    ActionParseError,
    Reason,
    extract_action,
    extract_thought,
    extract_thought_and_action,
    format_response,
    parse_action,
)

TABLE = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "model_responses.jsonl").read_text().splitlines()
    if line.strip()
]


def test_table_is_large_and_mixed() -> None:
    assert len(TABLE) >= 40
    assert sum("action" in row for row in TABLE) >= 25
    assert sum("error" in row for row in TABLE) >= 15
    assert len({row["id"] for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize("row", TABLE, ids=[row["id"] for row in TABLE])
def test_response_table(row: dict[str, str]) -> None:
    if "action" in row:
        assert extract_action(row["response"]).to_string() == row["action"], row["note"]
    else:
        with pytest.raises(ActionParseError) as info:
            extract_action(row["response"])
        assert info.value.reason == row["error"], row["note"]
        assert info.value.reason in set(Reason)


P = ANSWER_PHRASE


@pytest.mark.parametrize(
    "reasoning",
    [
        "Before I stop, I need to open the order.",
        "The stop action is not appropriate yet.",
        "stop [N/A] would be wrong here.",
        "Issuing ```stop [N/A]``` would be premature.",
        "The store is http://onestopmarket.com and I will stop later.",
        "Typing type [5] [stop sign] [1] is not needed. STOP is for the end.",
        "Action: stop [N/A] is what a lazy agent would do.",
    ],
)
def test_b1_b2_stop_in_reasoning_never_becomes_the_action(reasoning: str) -> None:
    """B1/B2: the reference tested 'stop' (and `stop [...]`) against the whole response."""
    response = f"Let's think step-by-step. {reasoning} {P} ```click [12]```"
    action = extract_action(response)
    assert action.kind is ActionKind.CLICK and action.target == "12"


def test_unfenced_action_after_phrase_ignores_later_inline_code() -> None:
    response = f"x. {P} click [12]. Note that `stop` comes later."
    assert extract_action(response) == parse_action("click [12]")


def test_unfenced_type_keeps_inner_brackets_and_drops_prose() -> None:
    response = f"x. {P} type [12] [a [b] c] [0] and then wait."
    assert extract_action(response) == parse_action("type [12] [a [b] c] [0]")


def test_unfenced_argumentless_verb_followed_by_prose() -> None:
    assert extract_action(f"x. {P} go_back to the results page").kind is ActionKind.GO_BACK


def test_fence_content_may_contain_backticks() -> None:
    response = f"x. {P} ```type [3] [run `make test`] [1]```"
    assert extract_action(response).text == "run `make test`"


def test_punctuation_inside_the_fence_is_dropped() -> None:
    assert extract_action(f"x. {P} ```click [12].```") == parse_action("click [12]")
    assert extract_action(f"x. {P} ```go_back;```") == parse_action("go_back")


def test_action_label_is_case_sensitive_so_prompt_slots_are_not_labels() -> None:
    """WebArena's prompt has a 'PREVIOUS ACTION:' slot; it must not count as an Action: label."""
    response = "OBJECTIVE: buy\nPREVIOUS ACTION: click [3]\nI am unsure what to do."
    with pytest.raises(ActionParseError) as info:
        extract_action(response)
    assert info.value.reason == Reason.NO_ANSWER_PHRASE


def test_answer_phrase_wins_over_action_label() -> None:
    response = f"Thought: x. Action: is unclear. {P} ```scroll [down]```"
    assert extract_action(response).to_string() == "scroll [down]"


def test_the_action_after_the_last_phrase_is_final_even_if_broken() -> None:
    """An earlier well-formed block is an echo: falling back to it would invent a decision."""
    response = f"Example: {P} ```stop [$279.49]```\nNow: {P} ```click [abc]```"
    with pytest.raises(ActionParseError) as info:
        extract_action(response)
    assert info.value.reason == Reason.BAD_TARGET


@pytest.mark.parametrize("value", [None, 42, b"click [1]"])
def test_non_text_is_rejected_with_the_same_error_type(value: object) -> None:
    for function in (extract_action, extract_thought):
        with pytest.raises(ActionParseError) as info:
            function(value)  # type: ignore[arg-type]
        assert info.value.reason == Reason.NOT_TEXT


# --- thoughts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "thought"),
    [
        (
            f"Let's think step-by-step. The price is $279.49. {P} ```stop [$279.49]```",
            "The price is $279.49.",
        ),
        (f"Let's think step by step: open it. {P} ```click [1]```", "open it."),
        (
            f"let’s think step-by-step\nLine one.\nLine two.\n\n**{P}** ```click [1]```",
            "Line one.\nLine two.",
        ),
        ("Thought: The list is above. Action: ```scroll [up]```", "The list is above."),
        ("**Thought:** Let's think step-by-step. Go back. **Action:** ```go_back```", "Go back."),
        (f"No opener here. {P} ```click [1]```", "No opener here."),
        ("Open the cart.\n```click [1550]```", "Open the cart."),
        ("click [12]", ""),
        ("I do not know what to do.", "I do not know what to do."),
        ("", ""),
    ],
)
def test_extract_thought(response: str, thought: str) -> None:
    assert extract_thought(response) == thought


def test_extract_thought_and_action_matches_the_separate_calls() -> None:
    response = (
        f"Let's think step-by-step. Search for it. {P} ```type [164] [restaurants near CMU] [1]```"
    )
    assert extract_thought_and_action(response) == (
        extract_thought(response),
        extract_action(response),
    )


def test_format_response_is_the_canonical_form() -> None:
    action = parse_action("type [164] [restaurants near CMU] [1]")
    response = format_response("  The search box is [164].  ", action)
    assert response == (
        "Let's think step-by-step. The search box is [164]. "
        "In summary, the next action I will perform is ```type [164] [restaurants near CMU] [1]```"
    )
    assert extract_thought_and_action(response) == ("The search box is [164].", action)
