"""evaluate.py end to end: real MiniWoB++ episodes in headless Chromium with ``model=tiny``.

The contract command as a subprocess (episodes, summary, transitions; a rerun resumes), WMLA
on a real page (every candidate simulated), world-model fidelity on the transitions just
recorded, and a browser killed mid-episode (the run goes on; the episode is an error).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.config import EnvConfig
from websynthesis.data.records import read_records
from websynthesis.env.browsergym_env import BrowserGymEnv, make_env
from websynthesis.evaluation.agent import Agent, AgentSettings, EpisodeSpec
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.web.actions import ANSWER_PHRASE

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
]


def evaluate(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), "model=tiny", *overrides,
         f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip


@pytest.fixture(scope="module")
def contract_run(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract command, run once for the tests below."""
    run_dir = tmp_path_factory.mktemp("contract")
    result = evaluate(
        run_dir, "env=miniwob", "env.tasks=[click-button,enter-text]", "eval.attempts=2",
        "eval.max_steps=3", "env.pool_size=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pass@1" in result.stdout  # the printed table
    return run_dir


def test_contract_outputs(contract_run: Path) -> None:
    episodes = list(read_records(contract_run / "episodes.jsonl"))
    keys = sorted((e["task"], e["seed"], e["attempt"]) for e in episodes)
    assert keys == [(task, 1000 + a, a) for task in ("click-button", "enter-text") for a in (0, 1)]
    for episode in episodes:
        assert {"task", "seed", "attempt", "success", "steps", "error", "reward"} <= set(episode)
        assert isinstance(episode["success"], bool) and 1 <= episode["steps"] <= 3
    summary = json.loads((contract_run / "summary.json").read_text())
    assert set(summary["tasks"]) == {"click-button", "enter-text"}
    for row in [*summary["tasks"].values(), summary["overall"]]:
        assert 0.0 <= row["success_rate"] <= 1.0 and "pass@1" in row
    assert summary["overall"]["n"] + summary["overall"]["errors"] == 4
    transitions = list(read_records(contract_run / "transitions.jsonl"))
    assert transitions and all(t["imagined"] is False for t in transitions)
    assert {"task_id", "observation", "action", "next_observation"} <= set(transitions[0])
    assert transitions[0]["observation"].startswith("Tab 0 (current): ")


def test_rerun_resumes_without_repeating_episodes(contract_run: Path) -> None:
    before = (contract_run / "episodes.jsonl").read_text()
    result = evaluate(
        contract_run, "env=miniwob", "env.tasks=[click-button,enter-text]", "eval.attempts=2",
        "eval.max_steps=3", "logger=none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 already done, 0 to run" in result.stdout + result.stderr
    assert (contract_run / "episodes.jsonl").read_text() == before


def test_fidelity_on_the_recorded_transitions(contract_run: Path, tmp_path: Path) -> None:
    result = evaluate(
        tmp_path, "eval=world_model", f"eval.transitions={contract_run / 'transitions.jsonl'}",
        "eval.limit=1", "model.roles.world_model.max_retries=0", "logger=none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fidelity.json").read_text())
    assert report["model"]["transitions"] == report["copy_baseline"]["transitions"] >= 1
    assert report["copy_baseline"]["str_valid"] == 1.0


def test_wmla_on_a_real_page_simulates_every_candidate(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    result = evaluate(
        tmp_path, "env=miniwob", "env.tasks=[click-button]", "eval.max_steps=1",
        "eval.wmla.enabled=true", "eval.wmla.candidates=3", "model.roles.judge.constrained=true",
        "model.roles.world_model.max_retries=0", "logger=none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "look-ahead:" in result.stdout + result.stderr
    [episode] = read_records(tmp_path / "episodes.jsonl")
    lookahead = list(read_records(tmp_path / "wmla.jsonl"))
    assert episode["error"] is None and len(episode["wmla"]) == len(lookahead) == 1
    for step in lookahead:
        candidates = step["candidates"]
        assert len(candidates) + step["duplicates"] + sum(step["proposal_failures"].values()) == 3
        assert candidates[0]["source"] == "greedy"
        for candidate in candidates:
            if candidate["action"].startswith("stop"):
                continue
            # Simulated for real: an imagined page, or the world model's failure on record.
            assert candidate["pages"] or candidate["ended"].startswith("world_model:")
            judged = candidate["score"] is not None or candidate["judge_failure"] is not None
            assert judged == bool(candidate["pages"])
        assert step["chosen"] is not None
    stats = json.loads((tmp_path / "model_stats.json").read_text())
    asked = sum(1 for s in lookahead for c in s["candidates"] if not c["action"].startswith("stop"))
    assert stats["world_model"]["samples"] == asked  # one simulation each, no retries


class _Scroller:
    """A policy that scrolls; before its ``kill_at``-th answer it kills the env's browser."""

    def __init__(self, env: BrowserGymEnv, kill_at: int) -> None:
        self.env, self.kill_at, self.answers = env, kill_at, 0

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.answers += 1
        if self.answers == self.kill_at:
            worker = psutil.Process(self.env.worker_pid)
            for proc in worker.children(recursive=True):
                if "chrom" in proc.name():
                    proc.kill()
        text = f"Scroll. {ANSWER_PHRASE} ```scroll [down]```"
        return [Generation(texts=[text]) for _ in requests]

    def close(self) -> None:
        pass


def test_browser_killed_mid_episode_is_an_error_and_the_run_goes_on() -> None:
    with make_env(EnvConfig(name="miniwob", step_timeout_s=20, max_steps=5)) as env:
        backend = _Scroller(env, kill_at=2)
        client = ModelClient(backend, {"policy": Role("policy", RoleSettings("policy"))})
        agent = Agent(client, AgentSettings(max_steps=2))

        async def two_episodes() -> list:
            return [await agent.run(env, EpisodeSpec("click-button", 1000 + a, a)) for a in (0, 1)]

        killed, after = asyncio.run(two_episodes())
    assert killed.error and killed.end == "env_error" and killed.steps == 2
    assert killed.success is None  # not counted as the agent's failure
    assert after.error is None and after.steps == 2 and after.end == "max_steps"
