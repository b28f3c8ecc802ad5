"""World-model examples and the transition records they are built from."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from websynthesis.data.chat import ChatExample
from websynthesis.data.transitions import (
    Transition,
    read_transitions,
    transition_from_row,
    write_transitions,
)
from websynthesis.data.world_model_data import (
    renumbered_elements,
    target_text,
    world_model_examples,
)
from websynthesis.io import DataFileError
from websynthesis.roles.client import Role, RoleSettings
from websynthesis.roles.prompts import PromptStyle, WorldModelInput
from websynthesis.training.mixes import build_mix, student_role
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import parse_axtree

HOME = (
    "Tab 0 (current): Quiet Forum\n\n"
    "[1] RootWebArea 'Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[8] searchbox 'Search' required: False\n"
    "\t[9] link 'Log in'\n"
    "\t[20] heading 'Latest threads'\n"
    "\t[21] link 'Welcome, new members'"
)
LOGIN = (
    "Tab 0 (current): Log in | Quiet Forum\n\n"
    "[1] RootWebArea 'Log in | Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[30] textbox 'Username' required: True\n"
    "\t[31] textbox 'Password' required: True\n"
    "\t[32] button 'Log in'"
)
# The same page after a click, but every element under a new id.
RENUMBERED = HOME.replace("[5]", "[105]").replace("[8]", "[108]").replace("[9]", "[109]")
BROKEN = "Tab 0 (current): x\n\n[1] RootWebArea 'x'\n\t\t\t[2] link 'too deep'"

WM = Role("world_model", RoleSettings("world_model", style=PromptStyle(observation_chars=120)))


def step(before: str, action: str, after: str, *history: str, **kw: object) -> Transition:
    actions = tuple(parse_action(a) for a in history)
    return Transition(before, parse_action(action), after, actions, **kw)  # type: ignore[arg-type]


def test_prompts_are_the_world_model_role_prompts_byte_for_byte() -> None:
    t = step(HOME, "click [9]", LOGIN, "goto [http://forum.local]", task_id="7", source="eval")
    counts: Counter[str] = Counter()
    [example] = world_model_examples([t], WM, counts=counts)
    question = WorldModelInput(parse_axtree(HOME), parse_action("click [9]"),
                               (parse_action("goto [http://forum.local]"),))  # fmt: skip
    assert example.messages[:-1] == WM.messages(question)
    assert "more elements truncated" in example.messages[1]["content"]  # the role's budget
    assert "1. goto [http://forum.local]" in example.messages[1]["content"]
    assert example.messages[-1] == {"role": "assistant", "content": f"<a11y>\n{LOGIN}\n</a11y>"}
    assert example.meta == {"task_id": "7", "source": "eval", "imagined": False,
                            "action": "click [9]", "renumbered": 0}  # fmt: skip
    assert counts == Counter({"kept": 1, "renumbered": 0})


def test_targets_read_back_through_the_role_parser_as_the_whole_next_page() -> None:
    for page in (HOME, LOGIN, LOGIN + "\n"):
        parsed = WM.parse(target_text(parse_axtree(page)), WorldModelInput(parse_axtree(HOME),
                          parse_action("click [9]")))  # fmt: skip
        assert parsed.ok and parsed.value is not None
        assert parsed.value.render() == page.rstrip("\n")


def test_renumbered_ids_are_counted_and_optionally_dropped() -> None:
    assert renumbered_elements(parse_axtree(HOME), parse_axtree(LOGIN)) == 0
    assert renumbered_elements(parse_axtree(HOME), parse_axtree(RENUMBERED)) == 3
    found = [step(HOME, "click [9]", LOGIN), step(HOME, "click [20]", RENUMBERED)]
    counts: Counter[str] = Counter()
    kept = world_model_examples(found, WM, counts=counts)
    assert [e.meta["renumbered"] for e in kept] == [0, 3]
    assert counts == Counter({"kept": 2, "renumbered": 1})
    counts.clear()
    kept = world_model_examples(found, WM, drop_renumbered=True, counts=counts)
    assert len(kept) == 1
    assert counts == Counter({"kept": 1, "renumbered": 1, "dropped/renumbered": 1})


def test_malformed_pages_and_repeats_are_dropped_and_counted() -> None:
    found = [
        step(HOME, "click [9]", LOGIN),
        step(HOME, "click [9]", LOGIN),
        step(HOME, "click [9]", BROKEN),
        step(BROKEN, "click [2]", HOME),
    ]
    counts: Counter[str] = Counter()
    assert len(world_model_examples(found, WM, counts=counts)) == 1
    assert counts == Counter({"kept": 1, "dropped/duplicate": 1, "dropped/malformed": 2})


def test_only_the_world_model_role_builds_world_model_examples() -> None:
    with pytest.raises(ValueError, match="world_model role"):
        world_model_examples([], Role("policy", RoleSettings("policy")), counts=Counter())


def test_the_student_model_config_sets_the_prompt() -> None:
    model = OmegaConf.create(
        {"adapters": {"world_model": "/adapters/wm"},
         "roles": {"world_model": {"template": "world_model", "observation_chars": 120,
                                   "adapter": "/adapters/wm"}}}
    )  # fmt: skip
    role = student_role(model, "world_model")
    assert role.settings.style.observation_chars == 120 and role.settings.adapter == "world_model"
    assert student_role(None, "world_model").settings == RoleSettings("world_model")


# --- transition records -----------------------------------------------------------------


def test_raw_records_round_trip(tmp_path: Path) -> None:
    found = [
        step(HOME, "type [8] [hello] [1]", LOGIN, "click [9]", task_id="3", source="evaluate"),
        step(LOGIN, "go_back", HOME, imagined=True),
    ]
    path = tmp_path / "transitions.jsonl"
    assert write_transitions(path, found) == 2
    assert list(read_transitions(path)) == found


def chat_row(**meta: object) -> dict[str, object]:
    question = WorldModelInput(parse_axtree(HOME), parse_action("click [9]"))
    messages = [*WM.messages(question), {"role": "assistant", "content": target_text(
        parse_axtree(LOGIN))}]  # fmt: skip
    return {"messages": messages, "meta": meta}


def test_chat_records_take_the_next_page_from_the_assistant_turn() -> None:
    row = chat_row(observation=HOME, action="click [9]", history=["goto [http://f.local]"],
                   task_id=4, kind="transition")  # fmt: skip
    t = transition_from_row(row, path="t.jsonl", line=1, imagined=True)
    history = (parse_action("goto [http://f.local]"),)
    assert t == Transition(HOME, parse_action("click [9]"), LOGIN, history, "4", True, "t.jsonl")
    explicit = transition_from_row(
        chat_row(observation=HOME, action="click [9]", next_observation=HOME, imagined=False),
        path="t.jsonl", line=1, imagined=True,
    )  # fmt: skip
    assert explicit.next_observation == HOME and not explicit.imagined


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1], "t.jsonl:3: expected a JSON object, got list"),
        ({"observation": HOME, "next_observation": LOGIN},
         "t.jsonl:3: field 'action': expected an action string, got NoneType"),
        ({"observation": HOME, "action": "click [x]", "next_observation": LOGIN},
         "t.jsonl:3: field 'action': not an action: "),
        ({"observation": "", "action": "click [9]", "next_observation": LOGIN},
         "t.jsonl:3: field 'observation': expected a non-empty accessibility-tree string"),
        ({"observation": HOME, "action": "click [9]", "next_observation": LOGIN,
          "history": ["click [9]", "fly [1]"]},
         "t.jsonl:3: field 'history[1]': not an action: "),
        ({"observation": HOME, "action": "click [9]", "next_observation": LOGIN, "imagined": 1},
         "t.jsonl:3: field 'imagined': expected true or false, got int"),
        (chat_row(action="click [9]"),
         "t.jsonl:3: field 'meta.observation': expected a non-empty accessibility-tree string "
         "(missing)"),
        ({**chat_row(observation=HOME, action="click [9]"),
          "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "no"}]},
         "t.jsonl:3: field 'messages[1].content': no usable next page (no_tree)"),
        ({"messages": [{"role": ["user"], "content": "x"}]},
         "t.jsonl:3: field 'messages[0].role': expected one of ['assistant', 'system', 'user']"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_field(row: object, message: str) -> None:
    with pytest.raises(DataFileError) as caught:
        transition_from_row(row, path="t.jsonl", line=3)
    assert str(caught.value).startswith(message)


# --- the mix ----------------------------------------------------------------------------


def test_the_mix_uses_real_transitions_unless_imagined_ones_are_asked_for(tmp_path: Path) -> None:
    real = tmp_path / "eval" / "transitions.jsonl"
    write_transitions(real, [step(HOME, "click [9]", LOGIN, source="evaluate")])
    synthesized = tmp_path / "synth" / "trajectories"
    synthesized.mkdir(parents=True)
    row = chat_row(observation=HOME, action="click [21]", task_id="demo")
    (synthesized / "transitions.jsonl").write_text(json.dumps(row) + "\n")
    data = {"transitions": [str(real)], "trajectories_dir": str(synthesized)}
    counts: Counter[str] = Counter()
    examples = build_mix("world_model", data, counts=counts)
    assert [e.meta["imagined"] for e in examples] == [False]
    assert all(e.meta["mix"] == "world_model" for e in examples)
    assert counts["world_model/transitions"] == 1
    both = build_mix("world_model", {**data, "imagined": True})
    assert [e.meta["imagined"] for e in both] == [False, True]
    assert both[1].meta["source"] == str(synthesized / "transitions.jsonl")
    assert isinstance(both[1], ChatExample) and both[0] == examples[0]
