"""Role prompts: real observation and action formats, one history formatter, strict templates."""

from __future__ import annotations

import json
import re

import jinja2
import pytest

from websynthesis.roles.parsing import ScoreScale, parse_policy
from websynthesis.roles.prompts import (
    JudgeInput,
    PolicyInput,
    PromptStyle,
    ReflectionInput,
    RewardInput,
    Step,
    WorldModelInput,
    format_history,
    judge_messages,
    policy_messages,
    reflection_messages,
    render,
    reward_messages,
    world_model_messages,
)
from websynthesis.web.actions import ANSWER_PHRASE, ActionKind, format_response, parse_action
from websynthesis.web.observation import AXTree, parse_axtree

HOME = parse_axtree(
    "Tab 0 (current): One Stop Market\n"
    "\n"
    "[1] RootWebArea 'One Stop Market' focused: True\n"
    "\t[1306] link 'My Account'\n"
    "\t[232] combobox '\\ue615 Search' autocomplete: both hasPopup: listbox required: False "
    "expanded: False\n"
    "\t[240] navigation 'Categories'\n"
    "\t\t[2495] menuitem '\\ue622 Beauty &amp; Personal Care' hasPopup: menu\n"
    "\t\t[2496] menuitem 'Electronics' hasPopup: menu\n"
    "\t[300] main ''\n"
    "\t\t[301] heading 'Product Showcases'\n"
    "\t\t[302] link 'Pre-baked Gingerbread House Kit'\n"
    "\t\t[303] StaticText '$19.99'"
)
RESULTS = parse_axtree(
    "Tab 0 (current): Search results for: 'headphones'\n"
    "\n"
    "[1] RootWebArea \"Search results for: 'headphones'\" focused: True\n"
    "\t[232] combobox '\\ue615 Search' autocomplete: both hasPopup: listbox required: False "
    "expanded: False\n"
    "\t[400] main ''\n"
    "\t\t[401] link 'Sony WH-1000XM4 Wireless Headphones'\n"
    "\t\t[402] StaticText '$278.00'\n"
    "\t\t[403] link 'Anker Soundcore Life Q20'\n"
    "\t\t[404] StaticText '$59.99'"
)
SITES = ("http://localhost:7770",)
REFERENCE_FAKE_HOSTS = ("onestopmarket.com", "luma.com", "gitlab.com", "reddit.com", "openstreet")


def big_page(links: int) -> AXTree:
    lines = [f"\t[{100 + i}] link 'Product number {i}'" for i in range(links)]
    head = "Tab 0 (current): Catalogue\n\n[1] RootWebArea 'Catalogue'\n"
    return parse_axtree(head + "\n".join(lines))


def trajectory() -> tuple[Step, ...]:
    return (
        Step(HOME, "The search box is [232].", parse_action("type [232] [headphones] [1]")),
        Step(RESULTS, "More results may be below.", parse_action("scroll [down]")),
        Step(RESULTS, "The Sony pair is the first hit.", parse_action("click [401]")),
    )


def section(content: str, title: str) -> str:
    """One top-level ``TITLE:`` section of a prompt, up to the next one or the closing line."""
    start = re.search(rf"(?:^|\n\n){re.escape(title)}:\n", content)
    assert start is not None, title
    rest = content[start.end() :]
    end = re.search(r"\n\n(?:[A-Z][A-Z ()]+:\n|[^\n]*\Z)", rest)
    return rest[: end.start()] if end else rest


# --- policy ----------------------------------------------------------------------------


def test_policy_system_prompt_teaches_the_real_grammar_and_format() -> None:
    every = frozenset(ActionKind)
    system = policy_messages(PolicyInput("x", HOME, actions=every))[0]["content"]
    for kind in ActionKind:  # every verb of websynthesis.web.actions, written as it parses
        assert f"`{kind.value}" in system, kind
    webarena = policy_messages(PolicyInput("x", HOME))[0]["content"]  # the default set
    assert "`select_option" not in webarena and "`tab_focus" in webarena
    assert "[id] role 'name'" in system and "property: value" in system
    assert "one tab deeper" in system and "Tab 0 (current)" in system
    assert f'"{ANSWER_PHRASE} ```<action>```"' in system and "Let's think step-by-step." in system


def test_policy_few_shots_are_real_turns_whose_answers_validate() -> None:
    messages = policy_messages(PolicyInput("Find headphones", RESULTS, (), SITES))
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    for question, reply in [(messages[1], messages[2]), (messages[3], messages[4])]:
        shown = parse_axtree(question["content"].split("OBSERVATION:\n", 1)[1].rsplit("\n\n", 1)[0])
        assert shown.is_valid
        parsed = parse_policy(reply["content"], shown)
        assert parsed.ok, parsed.detail
        assert reply["content"] == format_response(parsed.value.thought, parsed.value.action)


def test_policy_few_shots_can_be_left_out_for_a_model_trained_on_the_format() -> None:
    question = PolicyInput("Find headphones", RESULTS, trajectory(), SITES)
    with_examples = policy_messages(question)
    without = policy_messages(question, style=PromptStyle(few_shot=False))
    assert [m["role"] for m in without] == ["system", "user"]
    assert without == (with_examples[0], with_examples[-1])


@pytest.mark.parametrize("family", ["world_model", "world_model_delta"])
def test_world_model_manual_can_be_left_out_for_a_model_trained_on_the_format(family) -> None:
    question = WorldModelInput(RESULTS, parse_action("click [401]"))
    system, user = world_model_messages(question, family)
    brief_system, brief_user = world_model_messages(question, family, PromptStyle(manual=False))
    assert brief_user == user and "\n" not in brief_system["content"]
    assert system["content"].startswith(brief_system["content"] + "\n\n## Tree format")
    assert len(brief_system["content"]) < len(system["content"]) / 10


def test_policy_question_has_the_task_sites_history_and_page() -> None:
    last = policy_messages(PolicyInput("Find headphones", RESULTS, trajectory(), SITES))[-1]
    content = last["content"]
    assert content.startswith(
        "OBJECTIVE:\nFind headphones\n\nALLOWED SITES:\n- http://localhost:7770"
    )
    assert section(content, "OBSERVATION").startswith("Tab 0 (current): Search results")
    assert "<step-1>" in content and "</step-3>" in content
    assert content.endswith("What's the next action?")


def test_no_prompt_names_the_reference_fake_hosts() -> None:
    """R6: the allowed sites come from the task, never from the template."""
    steps = trajectory()
    everything = [
        *policy_messages(PolicyInput("x", HOME, steps, SITES)),
        *world_model_messages(WorldModelInput(HOME, parse_action("click [302]"))),
        *reward_messages(RewardInput("x", steps, RESULTS)),
        *judge_messages(JudgeInput("x", steps, answer="y")),
        *reflection_messages(ReflectionInput("x", parse_action("click [1306]"), HOME, RESULTS)),
    ]
    text = "\n".join(m["content"] for m in everything).lower()
    assert not [host for host in REFERENCE_FAKE_HOSTS if host in text]


def test_policy_observation_is_cut_to_the_budget() -> None:
    page = big_page(400)
    style = PromptStyle(observation_chars=2_000)
    question = policy_messages(PolicyInput("x", page), style=style)[-1]["content"]
    shown = section(question, "OBSERVATION")
    assert len(shown) <= 2_000 < len(page.render())
    assert parse_axtree(shown).truncated > 0  # the cut is marked, not silent


# --- the history formatter -------------------------------------------------------------


def test_history_steps_show_the_acted_on_element_reason_and_action() -> None:
    history = format_history(trajectory(), PromptStyle())
    blocks = history.split("\n</step-")
    assert history.startswith("<step-1>\nOBSERVATION:\n") and history.endswith("</step-3>")
    typed, scrolled, clicked = blocks[0], blocks[1], blocks[2]
    assert "\t[232] combobox '\\ue615 Search'" in typed
    assert "Product Showcases" not in typed  # only the neighbourhood of the element
    reason = "REASON FOR ACTION:\nThe search box is [232].\nACTION:\ntype [232] [headphones] [1]"
    assert reason in typed
    assert "ACTION:\nscroll [down]" in scrolled and "Tab 0 (current)" in scrolled  # no target
    assert "[401] link 'Sony WH-1000XM4 Wireless Headphones'" in clicked


def test_history_budget_and_observation_cap() -> None:
    steps = (Step(big_page(300), "Look.", parse_action("click [250]")), *trajectory())
    capped = format_history(steps, PromptStyle(step_chars=300, observed_steps=2))
    parts = capped.split("</step-")
    assert [("OBSERVATION:" in part) for part in parts[:4]] == [False, False, True, True]
    assert "REASON FOR ACTION:\nLook.\nACTION:\nclick [250]" in parts[0]
    uncapped = format_history(steps, PromptStyle(step_chars=300))
    first = uncapped.split("OBSERVATION:\n", 1)[1].split("\nREASON FOR ACTION:", 1)[0]
    assert len(first) <= 300 and "[250] link 'Product number 150'" in first


def test_history_without_thoughts_keeps_pages_and_actions() -> None:
    steps = trajectory()
    shown = format_history(steps, PromptStyle())
    bare = format_history(steps, PromptStyle(thoughts=False))
    assert "REASON FOR ACTION" not in bare and "The search box is [232]." not in bare
    for step in steps:  # the same blocks, less each step's reason
        shown = shown.replace(f"REASON FOR ACTION:\n{step.thought}\n", "", 1)
    assert bare == shown


def test_empty_history_says_so() -> None:
    assert format_history((), PromptStyle()) == "(none: this is the first step)"


def test_training_prompts_are_byte_identical_to_search_prompts() -> None:
    """D6: a trajectory saved during search and rebuilt for training renders the same prompt."""
    style = PromptStyle(step_chars=500, observed_steps=2)
    at_search: list[tuple[dict[str, str], ...]] = []
    taken: tuple[Step, ...] = ()
    pages = [HOME, RESULTS, RESULTS, RESULTS]
    for page, step in zip(pages, (*trajectory(), None), strict=True):
        inp = PolicyInput("Buy headphones", page, taken, SITES)
        at_search.append(policy_messages(inp, style=style))
        taken = taken if step is None else (*taken, step)
    saved = json.loads(json.dumps([step.to_dict() for step in taken]))
    rebuilt = tuple(Step.from_dict(data) for data in saved)
    for k, page in enumerate(pages):
        inp = PolicyInput("Buy headphones", parse_axtree(page.render()), rebuilt[:k], SITES)
        record = policy_messages(inp, style=style)
        assert record == at_search[k]


# --- world model, reward, judge, reflection ----------------------------------------------


def test_world_model_gets_the_canonical_action_not_the_reasoning() -> None:
    """B1/B5: the world model sees the parsed action in canonical form, and the real format."""
    response = (
        "Let's think step-by-step. I should not stop yet; stop [N/A] would be wrong. "
        f"{ANSWER_PHRASE} ```Type [232]  [headphones]```"
    )
    decision = parse_policy(response, HOME).value
    system, user = world_model_messages(WorldModelInput(HOME, decision.action))
    assert section(user["content"], "ACTION") == "type [232] [headphones] [1]"
    assert "stop" not in user["content"] and "think" not in user["content"]
    assert section(user["content"], "CURRENT PAGE") == HOME.render()
    assert "<a11y>" in system["content"] and "</a11y>" in system["content"]
    assert "[id] role 'name' property: value" in system["content"]
    assert "Keep the ids of elements that are still on the page" in system["content"]
    assert "one more tab than its parent" in system["content"]


def test_world_model_history_lists_earlier_actions_only() -> None:
    earlier = tuple(step.action for step in trajectory()[:2])
    user = world_model_messages(WorldModelInput(RESULTS, parse_action("click [401]"), earlier))[1]
    expected = "EARLIER ACTIONS:\n1. type [232] [headphones] [1]\n2. scroll [down]\n\n"
    assert user["content"].startswith(expected)
    assert "search box" not in user["content"]


def test_reward_prompt_uses_the_configured_scale() -> None:
    default = reward_messages(RewardInput("x", trajectory(), RESULTS))
    assert "Score: <a number from 1 to 5>" in default[0]["content"]
    assert "- 5: the task is fully accomplished" in default[0]["content"]
    unit = reward_messages(RewardInput("x", trajectory(), RESULTS), scale=ScoreScale(0, 1))
    assert "Score: <a number from 0 to 1>" in unit[0]["content"]
    assert "- 0.25: only a few useful steps" in unit[0]["content"]
    user = default[1]["content"]
    assert "</step-3>" in user and section(user, "CURRENT PAGE (after the last action)").startswith(
        "Tab 0 (current): Search results"
    )


def test_judge_prompt_has_outcome_and_look_ahead_modes() -> None:
    outcome = judge_messages(JudgeInput("x", trajectory(), answer="$278.00"))
    assert "FINAL ANSWER:\n$278.00" in outcome[1]["content"]
    assert "CANDIDATE ACTION" not in outcome[1]["content"]
    assert "Score: <0, 0.5 or 1>" in outcome[0]["content"]
    look_ahead = judge_messages(
        JudgeInput("x", trajectory()[:2], RESULTS, parse_action("click [401]"), (HOME, RESULTS))
    )[1]["content"]
    assert "CANDIDATE ACTION:\nclick [401]" in look_ahead and "FINAL ANSWER" not in look_ahead
    assert "SIMULATED RESULT:\n<page-1>\nTab 0 (current): One Stop Market" in look_ahead
    assert "</page-2>" in look_ahead and look_ahead.endswith("Judge the candidate action.")
    assert "FINAL ANSWER:\n(empty)" in judge_messages(JudgeInput("x", answer=""))[1]["content"]


def test_reflection_prompt_shows_both_pages_and_asks_for_go_back() -> None:
    failed = parse_action("click [1306]")
    system, user = reflection_messages(
        ReflectionInput("Find headphones", failed, HOME, RESULTS, trajectory()[:1])
    )
    assert "FAILED ACTION:\nclick [1306]" in user["content"]
    assert section(user["content"], "PREVIOUS PAGE").startswith("Tab 0 (current): One Stop Market")
    assert section(user["content"], "CURRENT PAGE").startswith("Tab 0 (current): Search results")
    assert f"{ANSWER_PHRASE} ```go_back```" in system["content"]


def test_templates_are_strict() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("policy_user", objective="x")
