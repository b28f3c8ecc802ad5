"""pass@k against brute-force enumeration; success rates, steps and errors kept apart; the
episode log a rerun resumes from."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from websynthesis.data.episodes import latest_episodes
from websynthesis.data.records import JsonlLog, read_records
from websynthesis.evaluation.metrics import Outcome, pass_at_k, summarize
from websynthesis.pipelines.evaluate import episode_specs


@st.composite
def attempts(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 9))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(attempts())
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_success(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    results = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(results, k))
    brute = sum(any(subset) for subset in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), brute, abs_tol=1e-12)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw holds a success
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for bad in [(3, 1, 4), (3, 4, 1), (3, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_summary_per_task_and_overall() -> None:
    outcomes = [
        Outcome("a", True, 3),
        Outcome("a", False, 5),
        Outcome("a", True, 4),
        Outcome("a", False, 0, error="environment failure: worker died"),
        Outcome("b", False, 10),
        Outcome("b", False, 10),
        Outcome("c", None, 2),  # not scored (e.g. program_html without a page)
    ]
    summary = summarize(outcomes, ks=[1, 2, 5])
    a, b, c = (summary["tasks"][name] for name in "abc")
    assert (a["n"], a["successes"], a["errors"]) == (3, 2, 1)
    assert a["success_rate"] == pytest.approx(2 / 3) and a["pass@1"] == pytest.approx(2 / 3)
    assert a["pass@2"] == 1.0 and "pass@5" not in a  # pass@5 needs 5 attempts
    assert a["mean_steps"] == 4.0  # the errored episode's steps are not the agent's
    assert (b["success_rate"], b["pass@2"]) == (0.0, 0.0)
    assert (c["n"], c["unscored"], c["success_rate"]) == (0, 1, None)
    overall = summary["overall"]
    assert overall["tasks"] == 3 and overall["n"] == 5 and overall["errors"] == 1
    assert overall["success_rate"] == pytest.approx((2 / 3 + 0) / 2)  # mean of task rates
    assert overall["pass@1"] == pytest.approx(overall["success_rate"])
    assert overall["pass@2"] == pytest.approx(0.5)
    assert summary["pass_at_tasks"] == {"pass@1": 2, "pass@2": 2}
    assert overall["mean_steps"] == pytest.approx((3 + 5 + 4 + 10 + 10) / 5)


def test_outcome_from_an_episode_line() -> None:
    line = {
        "task": "click-button",
        "seed": 1000,
        "attempt": 0,
        "success": True,
        "steps": 2,
        "error": None,
        "reward": 1.0,
    }
    assert Outcome.from_record(line) == Outcome("click-button", True, 2, None)
    assert summarize([], ks=[1])["overall"]["success_rate"] is None


def test_episode_log_survives_a_torn_line_and_resume_takes_the_latest(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    line = {"task": "a", "seed": 1000, "attempt": 0, "success": None, "steps": 1, "error": "x"}
    path.write_text(json.dumps(line) + '\n{"task": "a", "se')  # killed mid-write
    log = JsonlLog(path)  # cuts the torn line off
    log.append({**line, "success": True, "error": None})
    assert [r["error"] for r in read_records(path)] == ["x", None]
    assert path.read_text().count("\n") == 2
    assert latest_episodes(path)[("a", 1000, 0)]["success"] is True


def test_episode_plan_seeds_and_attempts() -> None:
    cfg = OmegaConf.create(
        {"eval": {"attempts": 2, "seeds": None, "seed_offset": 1000}, "env": {"site_urls": {}}}
    )
    keys = [spec.key for spec in episode_specs(cfg, {"t": None})]
    assert keys == [("t", 1000, 0), ("t", 1001, 1)]
    cfg.eval.seeds = [7, 9]
    keys = [spec.key for spec in episode_specs(cfg, {"t": None})]
    assert keys == [("t", 7, 0), ("t", 7, 1), ("t", 9, 0), ("t", 9, 1)]
    cfg.eval.attempts = 0
    with pytest.raises(ValueError, match=r"eval\.attempts must be >= 1"):
        episode_specs(cfg, {"t": None})
