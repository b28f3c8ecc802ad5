"""World-model fidelity on hand-made transitions, always next to the copy-the-page baseline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.data.transitions import Transition
from websynthesis.evaluation.fidelity import (
    evaluate_fidelity,
    fidelity_report,
    id_preservation,
    load_transitions,
    score_prediction,
)
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import AXTree, parse_axtree

BEFORE = (
    "Tab 0 (current): Search\n\n"
    "[1] RootWebArea 'Search' focused: True\n"
    "\t[2] textbox 'Query' required: False\n"
    "\t[3] button 'Go'\n"
    "\t[4] link 'Help'"
)
AFTER = (  # typed "cats" and searched: the box changed, two results appeared
    "Tab 0 (current): Results\n\n"
    "[1] RootWebArea 'Results' focused: True\n"
    "\t[2] textbox 'Query' required: False value: cats\n"
    "\t[3] button 'Go'\n"
    "\t[4] link 'Help'\n"
    "\t[9] link 'Cats - Wikipedia'\n"
    "\t[10] link 'Cat breeds'"
)
PERFECT = AFTER
RENUMBERED = AFTER.replace("[3] button", "[33] button").replace("[4] link", "[44] link")
HALF = AFTER.replace("\t[10] link 'Cat breeds'", "")  # one result missed


def tree(text: str) -> AXTree:
    return parse_axtree(text)


def test_a_perfect_prediction_scores_one_everywhere() -> None:
    scores = score_prediction(tree(PERFECT), tree(BEFORE), tree(AFTER))
    assert scores.str_valid == 1.0 and scores.f1_id == 1.0 and scores.f1_content == 1.0
    assert scores.id_preservation == 1.0 and scores.change_f1 == 1.0
    assert scores.text_similarity == 1.0


def test_copy_baseline_keeps_ids_but_misses_the_change() -> None:
    copy = score_prediction(tree(BEFORE), tree(BEFORE), tree(AFTER))
    assert copy.id_preservation == 1.0  # unchanged elements trivially keep their ids
    assert copy.change_f1 == 0.0  # it predicts no change; there were four
    assert 0.0 < copy.f1_id < 1.0 and 0.0 < copy.text_similarity < 1.0


def test_ids_matter_only_where_they_should() -> None:
    renumbered = score_prediction(tree(RENUMBERED), tree(BEFORE), tree(AFTER))
    assert renumbered.f1_content == 1.0 and renumbered.f1_id < 1.0
    assert id_preservation(tree(RENUMBERED), tree(BEFORE), tree(AFTER)) == 0.0  # Go, Help moved
    half = score_prediction(tree(HALF), tree(BEFORE), tree(AFTER))
    # real change: title, box, +2 links (4 items); predicted: 3 of them, all right.
    assert half.change_f1 == pytest.approx(2 * 1.0 * 0.75 / 1.75)


def test_structural_validity() -> None:
    broken = "[1] RootWebArea 'Results'\n\t\t\t[2] textbox 'Query'"  # depth jumps
    scores = score_prediction(tree(broken), tree(BEFORE), tree(AFTER))
    assert scores.str_valid == 0.0


def test_nothing_unchanged_leaves_id_preservation_undefined() -> None:
    other = "[7] RootWebArea 'Other'"
    assert id_preservation(tree(other), tree(BEFORE), tree(other)) is None


class _ScriptedWorldModel:
    """Answers each world-model request with the next scripted text."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return [Generation(texts=[self.answers.pop(0)]) for _ in requests]

    def close(self) -> None:
        pass


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_report_on_a_file_with_the_baseline_and_failures(tmp_path: Path) -> None:
    real = {"observation": BEFORE, "action": "type [2] [cats] [1]", "next_observation": AFTER}
    rows = [
        {**real, "task_id": "t", "imagined": False, "history": []},
        {**real, "imagined": True},  # imagined rows are not ground truth
        {**real, "task_id": "t", "imagined": False, "history": ["click [2]"]},
    ]
    path = tmp_path / "transitions.jsonl"
    _write(path, rows)
    transitions, imagined = load_transitions(path)
    assert (len(transitions), imagined) == (2, 1)
    assert [t.history for t in transitions][1][0].to_string() == "click [2]"
    settings = RoleSettings(template="world_model", max_retries=0)
    backend = _ScriptedWorldModel([f"<a11y>\n{PERFECT}\n</a11y>", "I cannot predict that."])
    client = ModelClient(backend, {"world_model": Role("world_model", settings)})
    report = asyncio.run(evaluate_fidelity(client, transitions, batch=1))
    model, copy = report["model"], report["copy_baseline"]
    assert model["transitions"] == copy["transitions"] == 2
    assert model["change_f1"] == pytest.approx(0.5)  # one perfect, one without a tree (0)
    assert copy["change_f1"] == 0.0 and copy["str_valid"] == 1.0
    assert report["failures"] == {"no_tree": 1} and report["no_prediction"] == 1
    assert load_transitions(path, limit=1)[0] == transitions[:1]


def test_the_report_splits_steps_that_changed_the_page_from_those_that_did_not() -> None:
    """Inventing a change on a page that stayed is told apart from missing a real one."""
    click, typed = parse_action("click [4]"), parse_action("type [2] [cats] [1]")
    transitions = [
        Transition(BEFORE, click, BEFORE),  # nothing changed; the model invents the results
        Transition(BEFORE, click, BEFORE),  # nothing changed; the model keeps the page
        Transition(BEFORE, typed, AFTER),  # changed; the model gets it right
        Transition(BEFORE, typed, AFTER),  # changed; no prediction
    ]
    predictions = [parse_axtree(AFTER), parse_axtree(BEFORE), parse_axtree(PERFECT), None]
    report = fidelity_report(transitions, predictions)
    assert report["by_change"] == {
        "unchanged": {"n": 2, "model_change_f1": 0.5},
        "changed": {"n": 2, "model_change_f1": 0.5},
    }
    assert report["by_action"]["click"]["by_change"]["changed"] == {
        "n": 0,
        "model_change_f1": None,
    }
    assert report["copy_baseline"]["change_f1"] == 0.5  # 1 on the two that stayed, 0 elsewhere
