"""The one-round miniature of docs/results.md's evidence, end to end, as a user runs it.

``scripts/learning_evidence.py --profile mini`` runs every co-evolution stage for real (MCTS
in Chromium, LoRA training with Lightning, live evaluation, imagined trajectories, fidelity)
on two MiniWoB++ tasks, then writes the report. Run again on the same dir, it redoes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROUND_ZERO = ["baseline", "search", "policy", "world_model", "fidelity", "evaluate"]
ROUND_ONE = ["sample", "policy", "world_model", "imagine", "fidelity", "evaluate"]


def run_script(out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "scripts/learning_evidence.py", "--profile", "mini", "--out", str(out),
        f"paths.cache_dir={cache}",
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)


def test_the_miniature_runs_every_stage_and_resumes(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "evidence"
    cache = tiny_model_path.parents[1]
    first = run_script(out, cache)
    assert first.returncode == 0, first.stderr[-4000:]

    done = json.loads((out / "state.json").read_text())["done"]
    assert done == [f"round_0/{s}" for s in ROUND_ZERO] + [f"round_1/{s}" for s in ROUND_ONE]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_seeds"] == [0, 1, 2] and metrics["eval_seeds"] == [1000, 1001]
    zero, one = metrics["rounds"]["0"], metrics["rounds"]["1"]
    for row in (zero, one):
        assert 0.0 <= row["success_rate"] <= 1.0
        assert set(row["tasks"]) == {"click-test", "focus-text"}
        assert row["fidelity"]["transitions"] > 0
    assert 0.0 <= zero["baseline_success_rate"] <= 1.0
    assert one["policy_data"]["examples"] >= zero["policy_data"]["examples"]
    assert one["imagine"]["queries"] == sum(one["imagine"]["outcomes"].values())

    # Held-out seeds are never searched, sampled or trained on.
    searched = {json.loads(line)["task_id"] for line in (out / "round_0/search/trees.jsonl").open()}
    assert {task.rsplit("@", 1)[1] for task in searched} == {"0", "1", "2"}
    for stage in ("round_1/sample",):
        seeds = {json.loads(line)["seed"] for line in (out / stage / "episodes.jsonl").open()}
        assert seeds == {0, 1, 2}
    for stage in ("round_0/baseline", "round_0/evaluate", "round_1/evaluate"):
        seeds = {json.loads(line)["seed"] for line in (out / stage / "episodes.jsonl").open()}
        assert seeds == {1000, 1001}
    for adapter in ("round_0/world_model", "round_1/world_model"):
        assert (out / adapter / "adapter" / "adapter_config.json").is_file()
    warm = json.loads((out / "round_1/world_model/stages/1-world_model/done.json").read_text())
    assert warm["started_from"] == str(out / "round_0/world_model/adapter")  # warm_start
    for index, row in enumerate((zero, one)):  # a round with no accepted data trains nothing
        trained = (out / f"round_{index}/policy/adapter/adapter_config.json").is_file()
        assert trained == (row["policy_data"]["examples"] > 0) != ("policy_skipped" in row)

    report = (out / "results.md").read_text()
    assert "## Checks" in report and "held-out seeds are disjoint" in report
    assert (out / "results_success.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results_fidelity.png").read_bytes()[:4] == b"\x89PNG"

    episodes = (out / "round_1/evaluate/episodes.jsonl").read_text()
    second = run_script(out, cache)  # a rerun on a finished run dir redoes nothing
    assert second.returncode == 0, second.stderr[-4000:]
    assert json.loads((out / "state.json").read_text())["done"] == done
    assert (out / "round_1/evaluate/episodes.jsonl").read_text() == episodes
    assert len(json.loads((out / "wall_time.json").read_text())["sessions"]) == 1  # no work
