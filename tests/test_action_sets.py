"""An environment's declared action set, ``select_option``, and the random-click baseline.

The declared set is one value read in five places (prompt, grammar, parser, browser, records);
these tests pin each reader to it, and ``select_option`` from its text to BrowserGym's call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import xgrammar as xgr
from omegaconf import DictConfig

from websynthesis.backends.constraints import GrammarCompiler
from websynthesis.backends.local import LocalBackend
from websynthesis.data.tasks import TaskFileError, task_from_config
from websynthesis.evaluation.baselines import RandomClick, baseline, clickable_ids
from websynthesis.roles.client import ModelClient
from websynthesis.roles.grammar import action_grammar
from websynthesis.roles.parsing import Failure, parse_policy
from websynthesis.roles.prompts import PolicyInput, policy_messages
from websynthesis.web.action_sets import (
    WEBARENA_ACTIONS,
    action_names,
    action_set,
    check_declared,
)
from websynthesis.web.actions import (
    ANSWER_PHRASE,
    ActionKind,
    ActionParseError,
    Reason,
    format_response,
    listed_options,
    parse_action,
)
from websynthesis.web.observation import parse_axtree

MINIWOB = action_set(["click", "type", "press", "select_option", "stop"])
PAGE = parse_axtree(
    "[1] RootWebArea 'Choose List Task' focused: True\n"
    "\t[2] StaticText 'Select Ertha from the list and click Submit.'\n"
    "\t[13] combobox '' value: 'Kasey' hasPopup: menu expanded: False\n"
    "\t\t[14] option 'Kasey' selected: True\n"
    "\t\t[15] option 'Ertha' selected: False\n"
    "\t\t[16] option 'Van Der Berg' selected: False\n"
    "\t[19] button 'Submit'\n"
    "\t[20] textbox 'Name' required: False"
)


def respond(action: str) -> str:
    return f"The list is [13]. {ANSWER_PHRASE} ```{action}```"


# --- the set itself ------------------------------------------------------------------------


def test_action_set_names_and_defaults() -> None:
    assert action_set(None) == action_set([]) == WEBARENA_ACTIONS
    assert len(WEBARENA_ACTIONS) == 12 and ActionKind.SELECT_OPTION not in WEBARENA_ACTIONS
    assert action_names(MINIWOB) == ["click", "type", "press", "stop", "select_option"]
    assert action_set(action_names(MINIWOB)) == MINIWOB
    with pytest.raises(ValueError, match="'fill'"):
        action_set(["click", "fill"])


def test_check_declared_names_the_set() -> None:
    assert check_declared(parse_action("click [19]"), MINIWOB)
    refused = check_declared(parse_action("goto [https://example.com]"), MINIWOB)
    assert not refused and refused.reason is Reason.UNDECLARED_ACTION
    assert "select_option" in refused.message
    assert not check_declared(parse_action("select_option [13] [Ertha]"), WEBARENA_ACTIONS)


# --- select_option: text, validation, BrowserGym --------------------------------------------


def test_select_option_round_trips_and_maps_to_browsergym() -> None:
    action = parse_action("select_option [13] [Van  Der Berg]")
    assert (action.kind, action.target, action.text) == (
        ActionKind.SELECT_OPTION,
        "13",
        "Van  Der Berg",
    )
    assert parse_action(str(action)) == action
    assert action.browsergym_calls() == ("select_option('13', 'Van  Der Berg')",)
    for bad, reason in [
        ("select_option", Reason.MISSING_TARGET),
        ("select_option [13]", Reason.MISSING_TEXT),
        ("select_option [] [Ertha]", Reason.MISSING_TARGET),
    ]:
        with pytest.raises(ActionParseError) as error:
            parse_action(bad)
        assert error.value.reason is reason, bad


def test_select_option_validates_against_the_listed_options() -> None:
    assert listed_options(PAGE.get("13")) == ["Kasey", "Ertha", "Van Der Berg"]  # type: ignore[arg-type]
    assert parse_action("select_option [13] [ertha]").validate(PAGE)  # case aside
    assert parse_action("select_option [13] [Van  Der Berg]").validate(PAGE)  # spacing aside
    unknown = parse_action("select_option [13] [Kiwi]").validate(PAGE)
    assert unknown.reason is Reason.UNKNOWN_OPTION and "'Ertha'" in unknown.message
    assert parse_action("select_option [19] [Ertha]").validate(PAGE).reason is (
        Reason.NOT_SELECTABLE
    )
    assert parse_action("select_option [99] [Ertha]").validate(PAGE).reason is Reason.UNKNOWN_ID
    # A list whose options the page does not show takes any option text.
    bare = parse_axtree("[1] RootWebArea ''\n\t[5] combobox 'Size' expanded: False")
    assert parse_action("select_option [5] [XL]").validate(bare)


# --- parser, prompt, grammar ------------------------------------------------------------


def test_parse_policy_refuses_undeclared_actions_as_invalid() -> None:
    outcome = parse_policy(respond("goto [https://example.com]"), PAGE, actions=MINIWOB)
    assert outcome.failure is Failure.INVALID_ACTION
    assert outcome.reason == Reason.UNDECLARED_ACTION
    assert parse_policy(respond("select_option [13] [Ertha]"), PAGE, actions=MINIWOB).ok
    webarena = parse_policy(respond("select_option [13] [Ertha]"), PAGE)
    assert webarena.reason == Reason.UNDECLARED_ACTION
    wrong = parse_policy(respond("select_option [13] [Kiwi]"), PAGE, actions=MINIWOB)
    assert (wrong.failure, wrong.reason) == (Failure.INVALID_ACTION, Reason.UNKNOWN_OPTION)


def test_the_prompt_lists_declared_actions_and_their_examples_only() -> None:
    inp = PolicyInput("Select Ertha", PAGE, actions=MINIWOB)
    messages = policy_messages(inp)
    system = messages[0]["content"]
    assert "select_option [id] [option]" in system and "click [id]" in system
    for verb in ("goto [", "go_back", "new_tab", "tab_focus", "close_tab", "hover [", "scroll ["):
        assert verb not in system, verb
    answers = [m["content"] for m in messages[1:-1] if m["role"] == "assistant"]
    for answer in answers:
        assert parse_policy(answer, actions=MINIWOB).ok, answer
    webarena = policy_messages(PolicyInput("Select Ertha", PAGE))
    assert "select_option" not in webarena[0]["content"]
    assert len(webarena) >= len(messages)  # examples of undeclared verbs are dropped


@pytest.fixture(scope="module")
def compiler(tiny_model_path: Path) -> GrammarCompiler:
    return LocalBackend(str(tiny_model_path)).grammars


def accepts(compiler: GrammarCompiler, grammar: str, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiler.compile(grammar).grammar)
    return matcher.accept_string(text) and matcher.is_completed()


def test_the_grammar_offers_declared_verbs_and_listed_options_only(
    compiler: GrammarCompiler,
) -> None:
    options = {"13": listed_options(PAGE.get("13"))}  # type: ignore[arg-type]
    ids = ["13", "19", "20"]
    grammar = action_grammar(ids, typeable_ids=["20"], kinds=MINIWOB, options=options)
    for ok in (
        "click [19]",
        "type [20] [Ertha] [0]",
        "press [Enter]",
        "stop []",
        "select_option [13] [Ertha]",
        "select_option [13] [Van Der Berg]",
    ):
        assert accepts(compiler, grammar, respond(ok)), ok
    for refused in (
        "select_option [13] [Kiwi]",  # not listed
        "select_option [19] [Ertha]",  # not a list
        "goto [https://example.com]",  # not declared
        "go_back",
        "scroll [down]",
        "hover [19]",
    ):
        assert not accepts(compiler, grammar, respond(refused)), refused
    webarena = action_grammar(ids, typeable_ids=["20"], options=options)
    assert not accepts(compiler, webarena, respond("select_option [13] [Ertha]"))
    assert accepts(compiler, webarena, respond("go_back"))
    free = action_grammar(ids, kinds=MINIWOB, options={"13": []})
    assert accepts(compiler, free, respond("select_option [13] [anything at all]"))


@pytest.mark.slow
def test_the_untrained_constrained_policy_acts_within_the_declared_set(
    tiny_model_config: Callable[..., DictConfig],
) -> None:
    """The untrained baseline: a random valid action of the set, never another verb."""
    client = ModelClient.from_config(tiny_model_config("model.roles.policy.n=12"))
    try:
        [row] = asyncio.run(
            client.sample("policy", [PolicyInput("Select Ertha", PAGE, actions=MINIWOB)])
        )
    finally:
        client.close()
    assert len(row) == 12
    for outcome in row:
        assert outcome.ok, (outcome.failure, outcome.reason, outcome.raw)
        action = outcome.value.action
        assert action.kind in MINIWOB
        assert action.validate(PAGE), action


# --- task files -----------------------------------------------------------------------------


def test_a_task_config_declares_its_actions() -> None:
    config = {"task_id": 1, "intent": "Select Ertha", "actions": ["click", "select_option"]}
    task = task_from_config(config)
    assert task.actions == ("click", "select_option")
    assert task.to_config()["actions"] == ["click", "select_option"]
    assert "actions" not in task_from_config({"task_id": 2, "intent": "x"}).to_config()
    for bad in (["click", "fill"], "click"):
        with pytest.raises(TaskFileError) as error:
            task_from_config({**config, "actions": bad}, path="tasks.jsonl", line=3)
        assert error.value.field == "actions" and "tasks.jsonl" in str(error.value)


# --- the random-click baseline -----------------------------------------------------------


def test_random_click_clicks_clickable_elements_uniformly_and_reproducibly() -> None:
    assert clickable_ids(PAGE) == ["13", "14", "15", "16", "19", "20"]
    policy = RandomClick()
    draws = [policy.decide(PAGE, seed).action for seed in range(600)]
    assert all(a.kind is ActionKind.CLICK and a.target in clickable_ids(PAGE) for a in draws)
    counts = {i: sum(a.target == i for a in draws) for i in clickable_ids(PAGE)}
    assert min(counts.values()) > 60, counts  # expected 100 each; a bias would starve one
    assert [policy.decide(PAGE, s).action for s in range(20)] == draws[:20]
    # The decision reads back as the action it is (what the episode records hold).
    assert (
        parse_policy(format_response("x", draws[0]), PAGE, actions=MINIWOB).value.action == draws[0]
    )


def test_random_click_fallbacks() -> None:
    text_only = parse_axtree("[1] RootWebArea ''\n\t[4] heading 'Hello'\n\tStaticText 'hi'")
    assert clickable_ids(text_only) == ["1", "4"]  # no widget: every element
    empty = parse_axtree("")
    assert RandomClick().decide(empty, 0).action == parse_action("stop []")
    assert baseline("model") is None and isinstance(baseline("random_click"), RandomClick)
    with pytest.raises(ValueError, match="random_click"):
        baseline("greedy")
