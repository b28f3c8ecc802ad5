"""The mix registry: every mix from one data config, deterministic, with ``meta.mix`` set."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.config import TrainDataConfig
from websynthesis.data.chat import ChatExample, write_chat_jsonl
from websynthesis.data.transitions import Transition, write_transitions
from websynthesis.roles.client import ModelClient
from websynthesis.roles.prompts import render
from websynthesis.training.mixes import MIX_NAMES, build_mix, load_transitions
from websynthesis.web.actions import parse_action

HOME = (
    "Tab 0 (current): Quiet Forum\n\n"
    "[1] RootWebArea 'Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[8] searchbox 'Search' required: False\n"
    "\t[9] link 'Log in'\n"
    "\t[21] link 'Welcome, new members'"
)
LOGIN = (
    "Tab 0 (current): Log in\n\n"
    "[1] RootWebArea 'Log in' focused: True\n"
    "\t[30] textbox 'Username' required: True\n"
    "\t[32] button 'Log in'"
)
CAPTION = "The front page of a quiet discussion forum, with a search box and a log-in link."


class Teacher:
    """A bare backend (no client): build_mix wraps it."""

    def __init__(self) -> None:
        self.asked = 0

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.asked += len(requests)
        return [Generation([CAPTION], finish_reasons=["stop"]) for _ in requests]

    def close(self) -> None:
        pass


def chat(user: str, answer: str, **meta: Any) -> ChatExample:
    messages = ({"role": "user", "content": user}, {"role": "assistant", "content": answer})
    return ChatExample(messages, meta)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Any]:
    """A data config with tasks, real transitions, synthesized trajectories and an SFT file."""
    tasks = tmp_path / "tasks.jsonl"
    configs = [{"task_id": i, "intent": "Log in", "state": HOME} for i in (1, 2)]
    tasks.write_text("".join(json.dumps(config) + "\n" for config in configs))
    transitions = tmp_path / "transitions.jsonl"
    write_transitions(transitions, [
        Transition(HOME, parse_action("click [9]"), LOGIN, task_id="1", source="evaluate"),
        Transition(LOGIN, parse_action("type [30] [marie] [0]"), LOGIN, task_id="1"),
        Transition(HOME, parse_action("click [21]"), LOGIN, task_id="1", imagined=True),
    ])  # fmt: skip
    trajectories = tmp_path / "trajectories"
    write_chat_jsonl(trajectories / "valuable.jsonl", [chat("v1", "a1"), chat("v2", "a2")])
    write_chat_jsonl(trajectories / "rollback.jsonl", [chat("r1", "go_back")])
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"input": "Describe it.", "output": CAPTION}]))
    return {
        "tasks": str(tasks),
        "transitions": [str(transitions)],
        "trajectories_dir": str(trajectories),
        "external": [{"path": str(sft), "format": "sft", "mix": "dense_caption"}],
        "seed": 0,
        "textui": {"elements_per_page": 2, "teacher": {"batch_size": 4}},
    }


def test_every_mix_builds_from_one_data_config(sources: dict[str, Any]) -> None:
    data = OmegaConf.create(sources)
    teacher = Teacher()
    counts: Counter[str] = Counter()
    names = [name for name in MIX_NAMES if name not in ("reward", "judge")]  # episodes and
    # live trees are their sources: tests/test_reward_data.py
    built = {name: build_mix(name, data, teacher, counts=counts) for name in names}
    assert {name: len(examples) for name, examples in built.items()} == {
        "dense_caption": 3,  # two distinct pages and the SFT row
        "element_function": 4,  # two per page: the clicked link with its effect, one drawn
        "state_transition": 2,  # the imagined transition is left out
        "world_model": 2,
        "valuable": 2,
        "rollback": 1,
    }
    for name, examples in built.items():
        assert all(example.meta["mix"] == name for example in examples)
        for message in (m for e in examples for m in e.messages if m["role"] == "system"):
            systems = {render("textui_system"), render("world_model_system", manual=True)}
            assert message["content"] in systems
    assert built["dense_caption"][-1].messages[0] == {"role": "user", "content": "Describe it."}
    assert built["element_function"][0].meta["observed"] is True
    assert teacher.asked == 2 + 4
    assert counts["dense_caption/external"] == 1
    assert counts["state_transition/transitions_imagined_left_out"] == 1
    again = {name: build_mix(name, data, teacher) for name in names}
    assert again == built  # deterministic


def test_train_files_replace_a_built_mix_and_external_files_add_to_it(
    sources: dict[str, Any], tmp_path: Path
) -> None:
    prebuilt = tmp_path / "captions.jsonl"
    write_chat_jsonl(prebuilt, [chat("page?", CAPTION, task_id="x")])
    data = {**sources, "train_files": {"dense_caption": str(prebuilt)}}
    examples = build_mix("dense_caption", data)  # no teacher needed
    assert [e.messages[0]["content"] for e in examples] == ["page?", "Describe it."]
    assert examples[0].meta == {"task_id": "x", "mix": "dense_caption"}


def test_os_genesis_triples_feed_the_transition_mixes(
    sources: dict[str, Any], tmp_path: Path
) -> None:
    walk = tmp_path / "walk.json"
    good = {"a11y_before": HOME, "action": ["click [5]", "5", {}], "a11y_after": LOGIN}
    walk.write_text(json.dumps([good, {**good, "action": "fly [5]"}]))
    entry = {"path": str(walk), "format": "os_genesis", "on_error": "skip"}
    data = {"external": [entry]}
    counts: Counter[str] = Counter()
    examples = build_mix("world_model", data, counts=counts)
    assert [e.meta["action"] for e in examples] == ["click [5]"]
    assert counts["world_model/external_skipped"] == 1
    both = load_transitions({**sources, "external": [entry], "imagined": True}, Counter())
    assert [t.action.to_string() for t in both] == [
        "click [9]", "type [30] [marie] [0]", "click [21]", "click [5]",
    ]  # fmt: skip


def test_textui_pages_are_cut_to_the_policy_budget(sources: dict[str, Any]) -> None:
    model = {"roles": {"policy": {"template": "policy", "observation_chars": 120}}}
    [first, _] = build_mix("state_transition", sources, model_cfg=model)
    assert "more elements truncated" in first.messages[1]["content"]


def test_empty_mixes_are_errors_and_missing_teachers_are_counted(
    sources: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="unknown mix 'captions'"):
        build_mix("captions", sources)
    counts: Counter[str] = Counter()
    assert build_mix("element_function", sources, None, counts=counts) == []
    assert counts["element_function/no_teacher"] == 1
    with pytest.raises(ValueError, match="mix 'rollback' is empty"):
        build_mix("rollback", {"tasks": None})
    (tmp_path / "rollback.jsonl").write_text("", encoding="utf-8")  # a search found none
    assert build_mix("rollback", {"trajectories_dir": str(tmp_path)}, counts=counts) == []
    assert counts["rollback/empty_source"] == 1
    with pytest.raises(ValueError, match="unknown mix 'capton'"):
        bad = [{"path": "x.json", "format": "sft", "mix": "capton"}]
        build_mix("valuable", {**sources, "external": bad})


def test_a_structured_data_config_reads_with_defaults(sources: dict[str, Any]) -> None:
    data = OmegaConf.structured(TrainDataConfig)
    data.train_files = {"valuable": str(Path(sources["trajectories_dir"]) / "valuable.jsonl")}
    assert len(build_mix("valuable", data, ModelClient(Teacher(), {}))) == 2
