"""Ranking quality of a reward model: AUC, pairwise accuracy and their intervals."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.evaluation.reward_quality import (
    bootstrap_auc,
    evaluate_judge,
    evaluate_reward_model,
    hanley_mcneil,
    pairwise_accuracy,
    ranking_report,
    roc_auc,
)
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.roles.parsing import ScoreScale
from websynthesis.training.reward_data import labelled_steps, labelled_trajectories, read_outcomes

sys.path.insert(0, str(Path(__file__).parent))
from test_reward_data import write_episodes  # the hand-labelled run dir


def brute_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_on_known_cases() -> None:
    labels = [True, True, False, False]
    assert roc_auc([4, 3, 2, 1], labels) == 1.0  # perfect
    assert roc_auc([1, 2, 3, 4], labels) == 0.0  # reversed
    assert roc_auc([3, 3, 3, 3], labels) == 0.5  # constant: every pair a tie
    assert roc_auc([0.9, 0.4, 0.6, 0.2], labels) == 0.75  # 3 of the 4 pairs in order
    assert roc_auc([1, 1, 0], [True, False, False]) == 0.75  # one tie (half), one win
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc([1, 2], [True, True])
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        roc_auc([1, 2], [True, False, True])


scores_and_labels = st.integers(2, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda ys: any(ys) and not all(ys)),
    )
)


@settings(max_examples=200, deadline=None)
@given(scores_and_labels)
def test_auc_is_mann_whitney_with_ties_half(case: tuple[list[float], list[bool]]) -> None:
    scores, labels = case
    auc = roc_auc(scores, labels)
    assert auc == pytest.approx(brute_auc(scores, labels))
    assert roc_auc([-s for s in scores], labels) == pytest.approx(1 - auc)
    assert roc_auc([s**3 + 7 for s in scores], labels) == pytest.approx(auc)  # ranks only
    assert roc_auc([1.0] * len(scores), labels) == 0.5
    # Binary grades: pairwise accuracy is the AUC.
    accuracy, pairs = pairwise_accuracy(scores, [float(y) for y in labels])
    assert accuracy == pytest.approx(auc) and pairs == sum(labels) * (len(labels) - sum(labels))


def test_pairwise_accuracy_on_grades_and_within_groups() -> None:
    grades = [1.0, 3.0, 5.0]
    assert pairwise_accuracy([0, 1, 2], grades) == (1.0, 3)
    assert pairwise_accuracy([2, 1, 0], grades) == (0.0, 3)
    assert pairwise_accuracy([0, 0, 0], grades) == (0.5, 3)
    assert pairwise_accuracy([0, 2, 1], grades) == (pytest.approx(2 / 3), 3)
    # Within groups only: (a: 1 < 3 ordered), (b: 5 vs 1 reversed); cross-group pairs ignored.
    scores, grades, groups = [0, 1, 0, 1], [1.0, 3.0, 5.0, 1.0], ["a", "a", "b", "b"]
    assert pairwise_accuracy(scores, grades, groups) == (0.5, 2)
    assert pairwise_accuracy([1, 2], [3.0, 3.0]) == (None, 0)  # no pair with different grades


def test_hanley_mcneil_by_hand() -> None:
    # A = 0.75, 10 + 10: Q1 = 0.6, Q2 = 0.642857; var = (0.1875 + 9 * 0.0375 + 9 * 0.080357)/100
    low, high = hanley_mcneil(0.75, 10, 10)
    assert (low, high) == (pytest.approx(0.53102, abs=1e-4), pytest.approx(0.96898, abs=1e-4))
    assert hanley_mcneil(1.0, 5, 5) == (1.0, 1.0)
    wide, narrow = hanley_mcneil(0.7, 5, 5), hanley_mcneil(0.7, 500, 500)
    assert wide[0] < narrow[0] < 0.7 < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        hanley_mcneil(0.5, 0, 3)


def test_bootstrap_is_seeded_and_resamples_clusters() -> None:
    scores = [0.9, 0.8, 0.3, 0.7, 0.2, 0.75, 0.6, 0.4]
    labels = [True, True, False, True, False, False, True, False]
    interval = bootstrap_auc(scores, labels, resamples=300, seed=1)
    assert interval == bootstrap_auc(scores, labels, resamples=300, seed=1)
    assert interval is not None and interval[0] <= roc_auc(scores, labels) <= interval[1]
    assert interval[0] < interval[1]
    # Two steps a side in one instance each: fewer clusters, a wider interval.
    clustered = bootstrap_auc(scores, labels, [0, 0, 1, 1, 2, 2, 3, 3], resamples=300, seed=1)
    assert clustered is not None
    assert bootstrap_auc([2, 1], [True, False], resamples=100) in (None, (1.0, 1.0))
    perfect = bootstrap_auc([3, 2, 1, 0], [True, True, False, False], resamples=200)
    assert perfect == (1.0, 1.0)
    # One cluster holding both classes: every resample is that cluster, so no spread.
    single = bootstrap_auc(scores, labels, ["x"] * 8, resamples=50)
    assert single == (roc_auc(scores, labels),) * 2


class ScoreBy:
    """A reward backend answering a fixed score per prompt, by what the prompt contains."""

    def __init__(self, answer: dict[str, str], default: str) -> None:
        self.answer, self.default = answer, default

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for request in requests:
            prompt = request.messages[-1]["content"]
            text = next((a for key, a in self.answer.items() if key in prompt), self.default)
            out.append(
                Generation([text] * request.sampling.n, 10, 5, ["stop"] * request.sampling.n)
            )
        return out

    def close(self) -> None:
        pass


def client(backend: ScoreBy) -> ModelClient:
    role = Role("reward", RoleSettings("reward", temperature=0.0, max_retries=0))
    return ModelClient(backend, {"reward": role})  # type: ignore[arg-type]


def test_a_model_that_knows_beats_the_constant(tmp_path: Path) -> None:
    steps = labelled_steps(read_outcomes([write_episodes(tmp_path)]), ScoreScale())
    # Good: the welcome page (the success), or one step that opened the form; bad: the rest.
    last_opened_form = "click [9]\n</step-1>\n\nCURRENT PAGE"
    knows = ScoreBy({"Welcome, marie": "Score: 5", last_opened_form: "Score: 3"}, "Score: 1")
    report = asyncio.run(evaluate_reward_model(client(knows), steps, resamples=100))
    assert (report["steps"], report["good"], report["bad"], report["instances"]) == (6, 3, 3, 2)
    assert report["labels"] == {"1": 3, "3": 2, "5": 1}
    model, constant = report["model"], report["constant"]
    assert model["auc"] == 1.0 and model["pairwise_accuracy"] == 1.0
    assert constant["auc"] == 0.5 and constant["pairwise_accuracy"] == 0.5
    assert model["auc_hanley_mcneil_95"][1] == 1.0 and report["unscored"] == 0
    assert model["sibling_pairs"] > 0 and model["sibling_pairwise_accuracy"] == 1.0
    assert report["shallower_is_better"]["auc"] is not None
    silent = asyncio.run(evaluate_reward_model(client(ScoreBy({}, "no idea")), steps))
    assert silent["unscored"] == 6 and silent["model"]["auc"] == 0.5  # all scored low
    with pytest.raises(ValueError, match="no labelled steps"):
        asyncio.run(evaluate_reward_model(client(knows), []))


def test_one_class_only_has_no_auc(tmp_path: Path) -> None:
    run = write_episodes(tmp_path, [("t", 0, 0, False, [("[1] RootWebArea 'a'", "x", "click [1]",
                                                        "[1] RootWebArea 'b'")])])  # fmt: skip
    steps = labelled_steps(read_outcomes([run]), ScoreScale())
    report = ranking_report([1.0], steps)
    assert report["model"]["auc"] is None and report["model"]["pairwise_accuracy"] is None


def test_the_judge_is_measured_on_whole_trajectories(tmp_path: Path) -> None:
    trajectories = labelled_trajectories(read_outcomes([write_episodes(tmp_path)]))
    knows = ScoreBy({"Welcome, marie": "Reason: done\nScore: 1"}, "Reason: no\nScore: 0")
    judge = Role("judge", RoleSettings("judge"))
    report = asyncio.run(
        evaluate_judge(ModelClient(knows, {"judge": judge}), trajectories, resamples=50)  # type: ignore[arg-type]
    )
    assert (report["trajectories"], report["succeeded"], report["unscored"]) == (4, 1, 0)
    assert report["model"]["auc"] == 1.0 and report["constant"]["auc"] == 0.5
    assert report["model"]["pairwise_accuracy"] == 1.0
