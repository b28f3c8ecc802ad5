"""Role output parsers: typed outcomes for every role, never an exception, never a guess."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.roles.parsing import (
    URL_NOT_ALLOWED,
    Decision,
    Failure,
    Parsed,
    Rating,
    ScoreScale,
    allowed_hosts,
    format_number,
    format_rating,
    parse_judge,
    parse_policy,
    parse_reflection,
    parse_reward,
    parse_world_model,
)
from websynthesis.web.actions import ANSWER_PHRASE, Action, ActionKind, format_response
from websynthesis.web.observation import AXNode, AXTree, parse_axtree

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
K = ActionKind

PAGE = parse_axtree(
    "Tab 0 (current): Search results\n"
    "\n"
    "[1] RootWebArea 'Search results' focused: True\n"
    "\t[10] link 'Home'\n"
    "\t[11] searchbox 'Search' required: False\n"
    "\t[12] button 'Search'\n"
    "\t[20] main ''\n"
    "\t\t[21] link 'Trail running shoes'\n"
    "\t\t[22] StaticText '$89.00'"
)


def answer(action: str, thought: str = "The page shows it.") -> str:
    return f"Let's think step-by-step. {thought} {ANSWER_PHRASE} ```{action}```"


# --- policy ----------------------------------------------------------------------------


def test_policy_reads_thought_and_action_and_validates_it() -> None:
    parsed = parse_policy(answer("click [21]"), PAGE)
    assert parsed.ok and parsed.failure is None
    assert parsed.value == Decision("The page shows it.", Action(K.CLICK, "21"))
    assert parsed.raw == answer("click [21]")


@pytest.mark.parametrize(
    ("action", "reason"),
    [("click [99]", "unknown_id"), ("type [10] [shoes] [1]", "not_typeable")],
)
def test_policy_invalid_action_keeps_the_decision_and_the_reason(action: str, reason: str) -> None:
    parsed = parse_policy(answer(action), PAGE)
    assert parsed.failure is Failure.INVALID_ACTION and parsed.reason == reason
    assert parsed.value is not None and str(parsed.value.action) == action  # a soft failure
    assert parsed.detail


@pytest.mark.parametrize(
    ("text", "failure", "reason"),
    [
        ("", Failure.EMPTY, ""),
        ("  \n", Failure.EMPTY, ""),
        ("I would click the link.", Failure.NO_ACTION, "no_answer_phrase"),
        (f"{ANSWER_PHRASE} ```click [21]", Failure.NO_ACTION, "unclosed_fence"),
        (answer("click [Submit]"), Failure.UNPARSABLE_ACTION, "bad_target"),
        (answer("fill [3] [x]"), Failure.UNPARSABLE_ACTION, "unknown_verb"),
    ],
)
def test_policy_failures_are_typed(text: str, failure: Failure, reason: str) -> None:
    parsed = parse_policy(text, PAGE)
    assert (parsed.failure, parsed.reason) == (failure, reason)
    assert (parsed.value, parsed.raw) == (None, text)


def test_policy_stop_is_read_from_the_action_only() -> None:
    """B1: reasoning that talks about stopping is not a stop."""
    text = answer("click [21]", "Before I stop, the stop action would be premature: stop [N/A].")
    parsed = parse_policy(text, PAGE)
    assert parsed.ok and parsed.value.action.kind is K.CLICK


def test_policy_goto_must_stay_on_the_allowed_sites() -> None:
    hosts = allowed_hosts(("http://localhost:7770", "shopping", "https://Wiki.Example.org/w"))
    assert hosts == {"localhost", "wiki.example.org"}
    assert parse_policy(answer("goto [http://localhost:7770/cart]"), PAGE, hosts).ok
    assert parse_policy(answer("goto [https://wiki.example.org/x]"), PAGE, hosts).ok
    refused = parse_policy(answer("goto [http://onestopmarket.com]"), PAGE, hosts)
    assert refused.failure is Failure.INVALID_ACTION and refused.reason == URL_NOT_ALLOWED
    # Sites given only by name cannot be checked, so nothing is refused.
    assert parse_policy(answer("goto [http://onestopmarket.com]"), PAGE, allowed_hosts(("x",))).ok


# --- world model -----------------------------------------------------------------------

TREE = "Tab 0 (current): Cart\n\n[1] RootWebArea 'Cart' focused: True\n\t[5] link 'Checkout'"


@pytest.mark.parametrize(
    "text",
    [
        f"<a11y>{TREE}</a11y>",
        f"<a11y>\n{TREE}\n</a11y>",
        f"The cart opens.\n<A11Y>\n```\n{TREE}\n```\n</a11y>\nThat is all.",
        f"```text\n{TREE}\n```",
        f"Here is the next page:\n{TREE}\nHope this helps.",
        f"<a11y>draft</a11y> then the real one <a11y>\n{TREE}\n</a11y>",
    ],
)
def test_world_model_finds_the_tree_in_its_envelope(text: str) -> None:
    parsed = parse_world_model(text)
    assert parsed.ok, parsed.detail
    assert parsed.value.render() == TREE and parsed.value.is_valid


def test_world_model_keeps_a_malformed_tree_with_its_errors() -> None:
    parsed = parse_world_model("<a11y>[1] RootWebArea 'A'\n\t\t[2] link 'b'\n\t[2] link 'c'</a11y>")
    assert parsed.failure is Failure.MALFORMED_TREE and parsed.reason == "depth_jump"
    assert "duplicate_id" in parsed.detail
    assert [node.id for node in parsed.value.nodes] == ["1", "2", "2"]


def test_world_model_cut_off_answer_is_a_soft_failure() -> None:
    parsed = parse_world_model(f"<a11y>\n{TREE}")
    assert parsed.failure is Failure.MALFORMED_TREE and parsed.reason == "unclosed_a11y"
    assert parsed.value.render() == TREE


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("", Failure.EMPTY),
        ("The page does not change.", Failure.NO_TREE),
        ("<a11y></a11y>", Failure.NO_TREE),
    ],
)
def test_world_model_without_a_tree(text: str, failure: Failure) -> None:
    parsed = parse_world_model(text)
    assert (parsed.failure, parsed.value, parsed.raw) == (failure, None, text)


# --- reward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score", "reason"),
    [
        ("Reason: good progress\nScore: 4", 4.0, "good progress"),
        ("Reason: nearly\nScore: 4.5", 4.5, "nearly"),
        ("**Reason**: fine\n**Score**: 4.5", 4.5, "fine"),
        ("**Reason:** fine\n**Score:** **3**", 3.0, "fine"),
        ("Score: 4/5\nReason: after", 4.0, "after"),
        ("Score: 3 out of 5", 3.0, ""),
        ("score = 2", 2.0, ""),
        ("The trajectory is coherent.\nFinal score: 5.", 5.0, "The trajectory is coherent."),
        ("Score (1-5): [1]", 1.0, ""),
        ("5", 5.0, ""),
        ("Reason: I said Score: 2 first.\nScore: 3", 3.0, "I said Score: 2 first."),
    ],
)
def test_reward_reads_many_score_formats(text: str, score: float, reason: str) -> None:
    parsed = parse_reward(text)
    assert parsed.ok, parsed.detail
    assert parsed.value.score == score
    assert parsed.value.reason == reason


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("", Failure.EMPTY),
        ("Reason: looks good", Failure.NO_SCORE),
        ("Score: high", Failure.NO_SCORE),
        ("Score: 7", Failure.SCORE_OUT_OF_RANGE),
        ("Score: 0", Failure.SCORE_OUT_OF_RANGE),
        ("Score: -1", Failure.SCORE_OUT_OF_RANGE),
        ("Score: 8/10", Failure.SCORE_OUT_OF_RANGE),
        ("Score: 1e999", Failure.NO_SCORE),
    ],
)
def test_reward_failures_are_not_clamped_or_zeroed(text: str, failure: Failure) -> None:
    """B6: an unreadable or impossible score is a failure, not 0 and not the nearest bound."""
    parsed = parse_reward(text)
    assert (parsed.failure, parsed.value) == (failure, None)


def test_reward_scale_is_configurable() -> None:
    unit = ScoreScale(0, 1)
    assert parse_reward("Score: 0.75", unit).value.score == 0.75
    assert parse_reward("Score: 4", unit).failure is Failure.SCORE_OUT_OF_RANGE
    assert parse_reward("Score: 7/10", ScoreScale(0, 10)).value.score == 7
    assert ScoreScale(1, 5).levels() == [1, 2, 3, 4, 5]
    assert ScoreScale(0, 1).levels() == [0, 0.25, 0.5, 0.75, 1]
    with pytest.raises(ValueError, match="bad score scale"):
        ScoreScale(5, 1)


# --- judge -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Reason: done\nScore: 1", 1.0),
        ("Reason: getting there\nScore: 0.5", 0.5),
        ("Reason: wrong page\nScore: 0", 0.0),
        ("Thought: close. Score: 0.8", 0.8),
        ("Score: 1/2", 0.5),
        ("SUCCESS", 1.0),
        ("NOT SUCCESS", 0.0),
        ("Status: success", 1.0),
        ("Status: Failure.", 0.0),
        ("Verdict: on track", 0.5),
        ("Verdict: **On the right track**", 0.5),
        ("Result: not yet complete", 0.0),
        ('Thoughts: x\nStatus: "failure"\nOn the right track to success: "yes"', 0.5),
        ('Thoughts: x\nStatus: "failure"\nOn the right track to success: "no"', 0.0),
        ("Score: incorrect", 0.0),
        ("complete", 1.0),
    ],
)
def test_judge_reads_numbers_and_verdict_words(text: str, score: float) -> None:
    parsed = parse_judge(text)
    assert parsed.ok, parsed.detail
    assert parsed.value.score == score


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("", Failure.EMPTY),
        ("The task is not complete yet, but it was a success to find the page.", Failure.NO_SCORE),
        ("Result: no changes were made", Failure.NO_SCORE),
        ("Score: 2", Failure.SCORE_OUT_OF_RANGE),
        ("Score: 3/0", Failure.SCORE_OUT_OF_RANGE),
    ],
)
def test_judge_does_not_guess_from_prose(text: str, failure: Failure) -> None:
    assert parse_judge(text).failure is failure


def test_judge_reason_stops_at_the_verdict() -> None:
    parsed = parse_judge("Thoughts: the cart is empty\nStatus: failure\nOn the right track: no")
    assert parsed.value == Rating(0.0, "the cart is empty")


# --- reflection ------------------------------------------------------------------------


def test_reflection_needs_a_reason_and_go_back() -> None:
    good = parse_reflection(answer("go_back", "The cart page has no reviews."))
    assert good.ok and good.value.reason == "The cart page has no reviews."
    assert parse_reflection(answer("click [21]")).failure is Failure.NO_GO_BACK
    assert parse_reflection("The page is wrong.").failure is Failure.NO_GO_BACK
    assert parse_reflection(f"{ANSWER_PHRASE} ```go_back```").failure is Failure.NO_REASON
    assert parse_reflection(" ").failure is Failure.EMPTY


# --- properties ------------------------------------------------------------------------

ALL_PARSERS = [
    lambda text: parse_policy(text, PAGE, frozenset({"localhost"})),
    parse_world_model,
    parse_reward,
    lambda text: parse_reward(text, ScoreScale(0, 1)),
    parse_judge,
    parse_reflection,
]
FRAGMENTS = st.sampled_from(
    [
        "Score", "score", "Reason:", "Status:", ":", "=", "/", " out of ", "4", "4.5", ".5", "-1",
        "1e9", "**", "`", "```", "<a11y>", "</a11y>", "[1] RootWebArea 'x'", "\t[2] link 'y'",
        "\n", "\t", " ", "Tab 0 (current): T", ANSWER_PHRASE, "```go_back```", "click [21]",
        "success", "not", "on track", "On the right track to success: yes", "[", "]", "'",
    ]
)  # fmt: skip
ANY_TEXT = st.text() | st.lists(FRAGMENTS | st.text(max_size=4), max_size=20).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_parsers_never_raise_and_always_keep_the_raw_text(text: str) -> None:
    for parser in ALL_PARSERS:
        parsed = parser(text)
        assert isinstance(parsed, Parsed) and parsed.raw == text
        assert parsed.ok == (parsed.failure is None)
        if parsed.ok:
            assert parsed.value is not None


REASONS = st.from_regex(r"[A-Za-z0-9 ,.'!?()-]{0,80}", fullmatch=True).filter(
    lambda r: "score" not in r.lower()
)


@FAST
@given(st.floats(1, 5), REASONS)
def test_reward_round_trips_its_canonical_format(score: float, reason: str) -> None:
    parsed = parse_reward(format_rating(Rating(score, reason)))
    assert parsed.ok and parsed.value == Rating(score, reason.strip())


@FAST
@given(st.floats(0, 1), REASONS)
def test_judge_round_trips_its_canonical_format(score: float, reason: str) -> None:
    parsed = parse_judge(format_rating(Rating(score, reason)))
    assert parsed.ok and parsed.value == Rating(score, reason.strip())


@FAST
@given(st.integers(-(10**6), 10**6), st.integers(1, 10**6))
def test_scores_on_any_scale_round_trip(low: int, width: int) -> None:
    scale = ScoreScale(low, low + width)
    for level in scale.levels():
        assert parse_reward(f"Score: {format_number(level)}", scale).value.score == level


THOUGHTS = st.from_regex(r"[A-Za-z0-9 ,.$?!']{1,80}", fullmatch=True).filter(str.strip)
ELEMENT_IDS = st.sampled_from(["10", "11", "12", "21", "22"])
POLICY_ACTIONS = st.one_of(
    st.builds(Action, st.sampled_from([K.CLICK, K.HOVER]), ELEMENT_IDS),
    st.builds(Action, st.just(K.TYPE), st.just("11"), THOUGHTS, st.booleans()),
    st.builds(Action, st.just(K.SCROLL), text=st.sampled_from(["up", "down"])),
    st.builds(Action, st.just(K.STOP), text=THOUGHTS | st.just("")),
    st.builds(Action, st.sampled_from([K.GO_BACK, K.GO_FORWARD, K.NEW_TAB, K.CLOSE_TAB])),
)


@FAST
@given(THOUGHTS, POLICY_ACTIONS)
def test_policy_round_trips_the_canonical_response(thought: str, action: Action) -> None:
    parsed = parse_policy(format_response(thought, action), PAGE)
    assert parsed.ok, parsed.detail
    assert parsed.value == Decision(thought.strip(), action)


@FAST
@given(THOUGHTS)
def test_reflection_round_trips_the_canonical_response(reason: str) -> None:
    parsed = parse_reflection(format_response(reason, Action(K.GO_BACK)))
    assert parsed.ok and parsed.value.reason == reason.strip()


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@st.composite
def trees(draw: st.DrawFn) -> AXTree:
    """Random well-formed WebArena trees with a header."""
    size = draw(st.integers(1, 12))
    depths = [0]
    for _ in range(size - 1):
        depths.append(draw(st.integers(1, depths[-1] + 1)))
    ids = draw(st.lists(st.integers(1, 9999).map(str), min_size=size, max_size=size, unique=True))
    roles = st.sampled_from(["RootWebArea", "link", "button", "StaticText", "textbox", "main"])
    nodes = [
        AXNode(node_id, draw(roles), draw(st.text(LETTERS + " '\"&", max_size=20)), {}, depth)
        for node_id, depth in zip(ids, depths, strict=True)
    ]
    title = draw(st.text(LETTERS + " ", max_size=20))
    return AXTree.from_nodes(nodes, header=f"Tab 0 (current): {title}")


@FAST
@given(trees(), st.sampled_from(["<a11y>{}</a11y>", "<a11y>\n{}\n</a11y>", "```\n{}\n```", "{}"]))
def test_world_model_round_trips_any_well_formed_tree(tree: AXTree, envelope: str) -> None:
    parsed = parse_world_model(envelope.format(tree.render()))
    assert parsed.ok, parsed.detail
    assert parsed.value.render() == tree.render()
