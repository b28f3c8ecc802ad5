"""The miniature of docs/results.md's evidence, end to end, as a user runs it.

``scripts/learning_evidence.py evidence=mini`` runs every stage for real (MCTS in Chromium and
inside the trained world model, LoRA training with Lightning for the policy, world and reward
models, live evaluation of every arm, replays of imagined successes, fidelity; the co-evolution
rounds are left to the full profile) on two MiniWoB++ tasks, then writes the report and
``results.json``. Run again on the same dir, it redoes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from websynthesis.pipelines.evidence_results import ARMS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.browser]

HEADLINE_STAGES = [
    "live_search", "explore", "real_data", "world_model", "reward_model", "first_pages",
    "imagined_search", "reproduce",
    "train_bc_imagined", "eval_bc_imagined", "train_bc_live", "eval_bc_live",
]  # fmt: skip
ABLATION_STAGES = [
    "train_bc_imagined_valuable", "eval_bc_imagined_valuable",
    "train_textui_bc_imagined", "eval_textui_bc_imagined", "eval_wmla", "eval_greedy",
]  # fmt: skip


def run_script(out: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "scripts/learning_evidence.py", "evidence=mini", f"hydra.run.dir={out}",
        f"report_dir={out / 'report'}", f"paths.cache_dir={cache}", *overrides,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1700)


def seeds_of(run: Path) -> set[int]:
    return {json.loads(line)["seed"] for line in (run / "episodes.jsonl").open()}


def test_the_miniature_runs_every_stage_and_resumes(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "evidence"
    cache = tiny_model_path.parents[1]
    early = run_script(out, cache, "part=ablations")  # the ablations build on the headline
    assert early.returncode != 0 and "run part=headline" in early.stderr

    first = run_script(out, cache, "part=headline")
    assert first.returncode == 0, first.stderr[-4000:]
    done = json.loads((out / "state.json").read_text())["done"]
    assert done == [
        *(f"seed_0/{s}" for s in HEADLINE_STAGES), "untrained", "random_click",
        "seed_0/fidelity", "seed_0/world_model_fit", "seed_0/reward_quality",
    ]  # fmt: skip
    headline = json.loads((out / "results.json").read_text())
    assert not headline["arms"]["wmla"]["evaluated"] and headline["arms"]["bc_live"]["evaluated"]
    assert "(not run yet)" in (out / "report" / "results.md").read_text()

    second = run_script(out, cache, "part=ablations")
    assert second.returncode == 0, second.stderr[-4000:]
    done = json.loads((out / "state.json").read_text())["done"]
    assert done[len(HEADLINE_STAGES) + 5 :] == [f"seed_0/{s}" for s in ABLATION_STAGES]
    results = json.loads((out / "report" / "results.json").read_text())
    assert results == json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["click-button", "choose-list"]
    assert results["train_seeds"] == [0, 1, 2] and results["eval_seeds"] == [1000, 1001]
    assert set(results["arms"]) == set(ARMS)
    for arm, row in results["arms"].items():
        assert row["episodes"] == 4, arm  # 2 tasks x 2 held-out seeds, every arm the same
        assert 0 <= row["successes"] <= 4 and row["ci95"][0] <= row["rate"] <= row["ci95"][1]
    assert results["wall_time_min"] > 0
    assert list(results["stage_minutes"]) == done  # every stage timed, in the order it ran
    steps = results["pipeline_seed_runs"]["0"]["real_steps"]
    assert 0 < steps["bc_imagined"] <= steps["bc_live"]
    rep = results["reproduction"]
    assert 0 <= rep["reproduced"] <= rep["imagined_successes"]
    assert results["world_model"]["all"]["n"] > 0
    assert 0 < results["world_model_fit"]["all"]["n"] <= 300  # every k-th training transition
    reward = results["reward_model"]
    assert reward["steps"] > 0 and reward["judge"]["trajectories"] > 0
    assert reward["constant"]["auc"] in (None, 0.5)
    assert results["rounds"] == []  # mini.yaml: coevolve.rounds=0 (CI's time)
    report = (out / "report" / "results.md").read_text()
    sessions = json.loads((out / "sessions.json").read_text())  # the early one ran no stage
    assert [s["command"].split()[-1] for s in sessions] == ["part=headline", "part=ablations"]
    assert all(f"{s['command']}   # commit {s['commit']}" in report for s in sessions)
    assert "## Goals" in report and "![success per arm](results_success.png)" in report
    assert (out / "report" / "results_success.png").stat().st_size > 0

    # Held-out seeds are never searched, explored or trained on; every arm ran on them.
    searched = {
        json.loads(line)["task_id"] for line in (out / "seed_0/live_search/trees.jsonl").open()
    }
    assert {task.rsplit("@", 1)[1] for task in searched} == {"0", "1", "2"}
    imagined = {
        json.loads(line)["task_id"] for line in (out / "seed_0/imagined_search/trees.jsonl").open()
    }
    assert {task.rsplit("@", 1)[1] for task in imagined} <= {"0", "1", "2"}
    for explorer in ("model", "random_click"):  # explore.attempts=2: one attempt each
        assert seeds_of(out / "seed_0/explore" / explorer) == {0, 1, 2}
    real = [json.loads(line) for line in (out / "seed_0/real_data/episodes.jsonl").open()]
    assert {(row["attempt"], row["explorer"]) for row in real} <= {(0, 0), (1, 1)}
    for arm in ("untrained", "random_click"):
        assert seeds_of(out / arm) == {1000, 1001}
    for stage in ("eval_bc_live", "eval_bc_imagined", "eval_wmla", "eval_greedy"):
        assert seeds_of(out / "seed_0" / stage) == {1000, 1001}
    random_actions = [
        json.loads(line)["actions"] for line in (out / "random_click/episodes.jsonl").open()
    ]
    assert all(a.startswith("click [") for actions in random_actions for a in actions)

    again = run_script(out, cache)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "state.json").read_text())["done"] == done
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["wall_time_min"] == results["wall_time_min"]  # a finished run adds no time
