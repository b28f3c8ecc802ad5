"""The chaos soak (``bench/soak.py``), shrunk to a CI-sized run: synthesis through the
project's server under transport faults and malformed answers, killed and resumed, ends with
the uninterrupted run's trees and trajectories; and the soak fails when resume is broken on
purpose (its checks can see what they are there to see)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def soak(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "soak.py"),
        "synthesis",
        "--tasks=3",
        "--kills=2",
        "--fault-share=0.3",
        "--malformed-share=0.15",
        f"--work={tmp_path / 'work'}",
        f"--out={out}",
        *extra,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.exists(), result.stderr[-3000:]
    return result, json.loads(out.read_text())["synthesis"]


@pytest.mark.slow
def test_killed_synthesis_under_faults_ends_as_the_uninterrupted_run(tmp_path: Path) -> None:
    result, figures = soak(tmp_path)
    assert result.returncode == 0, figures["failed"]
    assert figures["kills"] == 2 and figures["failed"] == []
    assert figures["trees_differing_bytes"] == 0
    assert set(figures["trajectories_differing_bytes"].values()) == {0}
    assert figures["faults_injected_total"] > 0  # the faults were there to be survived
    assert figures["malformed_answers"]["reference"] > 0
    assert figures["retried_recorded_total"] <= figures["faults_injected_total"]


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", ["store-rewrites", "resume-forgets"])
def test_the_soak_fails_when_resume_is_broken(tmp_path: Path, sabotage: str) -> None:
    result, figures = soak(tmp_path, f"--sabotage={sabotage}", "--fault-share=0")
    assert result.returncode == 1
    assert any("trees.jsonl" in failure for failure in figures["failed"]), figures["failed"]


@pytest.mark.slow
def test_training_killed_at_every_kill_point_ends_with_the_uninterrupted_adapters(
    tmp_path: Path,
) -> None:
    """Killed during a step, inside checkpoint writes, inside an adapter's save and before its
    publication: the adapters equal the uninterrupted run's tensor for tensor, nothing left
    behind (the per-step dropout seed and the same-directory checkpoint write at work)."""
    out = tmp_path / "soak.json"
    command = [sys.executable, str(REPO / "bench" / "soak.py"), "train", f"--work={tmp_path}"]
    result = subprocess.run(
        [*command, f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    figures = json.loads(out.read_text())["train"]
    assert result.returncode == 0, figures["failed"]
    assert figures["kills_survived"] == len(figures["plan"]) == 6
    assert set(figures["adapter_tensors_differing"].values()) == {0}
    assert figures["leftovers"] == []


@pytest.mark.slow
@pytest.mark.browser
def test_evaluation_with_workers_killed_and_hung_loses_no_episode(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [sys.executable, str(REPO / "bench" / "soak.py"), "evaluate", f"--work={tmp_path}"]
    result = subprocess.run(
        [*command, f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    figures = json.loads(out.read_text())["evaluate"]
    assert result.returncode == 0, figures["failed"]
    assert figures["episodes_lost"] == 0 and figures["episodes_differing"] == 0
    assert figures["faults_injected"]["kill_job"] == 1
    assert figures["faults_injected"].get("kill_worker", 0) >= 1
