"""The chaos soak (``bench/soak.py``), CI-sized: synthesis through the project's server under
transport faults and malformed answers, training killed at every kill point, and live
evaluation with its browser workers killed and hung, each end as the uninterrupted run; and
the soak fails when resume is broken on purpose (its checks can see what they are there to
see). The co-evolution scenario (~6 minutes) is BENCHMARKS.md's, not CI's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_SYNTHESIS = ("--tasks=3", "--kills=2", "--fault-share=0.3", "--malformed-share=0.15")


def soak(scenario: str, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """``bench/soak.py <scenario>``'s exit code and figures."""
    out = tmp_path / "soak.json"
    command = [sys.executable, str(REPO / "bench" / "soak.py"), scenario, *extra]
    command += [f"--work={tmp_path / 'work'}", f"--out={out}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.exists(), result.stderr[-3000:]
    return result.returncode, json.loads(out.read_text())[scenario]


@pytest.mark.slow
def test_killed_synthesis_under_faults_ends_as_the_uninterrupted_run(tmp_path: Path) -> None:
    code, figures = soak("synthesis", tmp_path, *SMALL_SYNTHESIS)
    assert code == 0, figures["failed"]
    assert figures["kills"] == 2 and figures["failed"] == []
    assert figures["trees_differing_bytes"] == 0
    assert set(figures["trajectories_differing_bytes"].values()) == {0}
    assert figures["faults_injected_total"] > 0  # the faults were there to be survived
    assert figures["malformed_answers"]["reference"] > 0
    assert figures["retried_recorded_total"] <= figures["faults_injected_total"]
    assert figures["all_requests_failing_exit_code"] not in (0, None)


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", ["store-rewrites", "resume-forgets"])
def test_the_soak_fails_when_resume_is_broken(tmp_path: Path, sabotage: str) -> None:
    # The smallest soak that resumes: 2 tasks, 1 kill, no faults (they are not what is checked)
    code, figures = soak("synthesis", tmp_path, "--tasks=2", "--kills=1", "--fault-share=0",
                         "--malformed-share=0", f"--sabotage={sabotage}")  # fmt: skip
    assert code == 1
    assert any("trees.jsonl" in failure for failure in figures["failed"]), figures["failed"]


@pytest.mark.slow
def test_training_killed_at_every_kill_point_ends_with_the_uninterrupted_adapters(
    tmp_path: Path,
) -> None:
    """Killed during a step, inside checkpoint writes, inside an adapter's save and before its
    publication: the adapters equal the uninterrupted run's tensor for tensor, nothing left
    behind (the per-step dropout seed and the same-directory checkpoint write at work)."""
    code, figures = soak("train", tmp_path)
    assert code == 0, figures["failed"]
    assert figures["kills_survived"] == len(figures["plan"]) == 6
    assert set(figures["adapter_tensors_differing"].values()) == {0}
    assert figures["leftovers"] == []


@pytest.mark.slow
@pytest.mark.browser
def test_evaluation_with_workers_killed_and_hung_loses_no_episode(tmp_path: Path) -> None:
    code, figures = soak("evaluate", tmp_path, "--eval-attempts=2")
    assert code == 0, figures["failed"]
    assert figures["episodes_lost"] == 0 and figures["episodes_differing"] == 0
    assert figures["episodes_errored_by_faults"] >= 1  # an episode was cut short and rerun
    assert figures["faults_injected"]["kill_job"] == 1
