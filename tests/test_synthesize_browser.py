"""synthesize.py world=browser end to end: MCTS on live MiniWoB++ pages with ``model=tiny``.

The contract command as a subprocess (real Hydra, headless Chromium): one tree per (task,
seed) instance, the environment's instruction as each tree's objective, the environment's
rewards in the trees and never a reward-model call, valid trajectories of real transitions;
a rerun on the same run dir searches nothing again. In process: the browsers are stopped
when the run fails after they started, and a bad browser config fails before any starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from test_synthesis_pipeline import assert_valid_run, records
from test_synthesis_world_policy import Website

from websynthesis.config import register_configs
from websynthesis.data.tasks import instance_id, split_instance
from websynthesis.pipelines import synthesize
from websynthesis.roles.client import ModelClient
from websynthesis.search import SearchEngine
from websynthesis.synthesis import TRAJECTORY_KINDS

REPO_ROOT = Path(__file__).resolve().parents[1]
# MiniWoB++'s instruction for these tasks is the same under every seed.
INSTRUCTIONS = {"click-test": "Click the button.", "focus-text": "Focus into the textbox."}
PAGES = {"click-test": "Click Test Task", "focus-text": "Focus Text Task"}
INSTANCES = [f"{task}@{seed}" for task in INSTRUCTIONS for seed in (0, 1)]
# The contract command on 2 tasks x 2 seeds, with a budget that keeps it to seconds per tree
# on 2 CPU cores (most steps first replay their prefix on a freshly reset page).
COMMAND = [
    "world=browser",
    "env=miniwob",
    "env.tasks=[click-test,focus-text]",
    "world.seeds=[0,1]",
    "env.pool_size=2",
    "model=tiny",
    "search=small",
    "search.iterations=2",
    "search.max_depth=2",
    "logger=none",
    "progress=false",
]


def synthesize_browser(run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "synthesize.py"), *COMMAND, f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def browser_run(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract command, run once for the tests below."""
    run_dir = tmp_path_factory.mktemp("browser")
    synthesize_browser(run_dir)
    return run_dir


@pytest.mark.browser
@pytest.mark.slow
def test_one_tree_per_instance_searched_on_the_real_page(browser_run: Path) -> None:
    assert_valid_run(browser_run, INSTANCES)  # every example's action valid on its page
    for record in records(browser_run):
        task = record["task_id"].split("@")[0]
        assert "skipped" not in record and record["tree"] is not None  # searched, not skipped
        assert record["goal"] == {
            "objective": INSTRUCTIONS[task],
            "allowed_sites": [],
            "action_set": ["click", "type", "press", "stop", "select_option"],  # env=miniwob's
        }
        root, *nodes = record["tree"]["nodes"]
        assert root["state"]["observation"].startswith(f"Tab 0 (current): {PAGES[task]}\n")
        assert "file://" in root["state"]["observation"] and nodes
        for node in nodes:  # scored by the page: MiniWoB's 0 or 1, as 1 or 5 on the scale
            if node["terminal"] == "world_error":
                continue
            assert node["env_reward"] in (0.0, 1.0)
            assert node["reward"] == 1.0 + 4.0 * node["env_reward"]
            assert node["reward_reason"] == "the environment's reward"
        for kind in ("valuable", "rollback"):
            for row in record["examples"][kind]:
                prompt = row["messages"][-2]["content"]
                assert f"OBJECTIVE:\n{INSTRUCTIONS[task]}\n" in prompt


@pytest.mark.browser
@pytest.mark.slow
def test_env_rewards_replace_the_reward_model(browser_run: Path) -> None:
    stats = json.loads((browser_run / "stats.json").read_text())
    assert stats["tasks"]["done"] == stats["tasks"]["searched"] == 4 and stats["errors"] == []
    assert stats["calls"].get("reward", 0) == 0 and "world_model" not in stats["calls"]
    evaluations = stats["counters"]["policy"]["evaluations"]
    assert set(evaluations) == {"environment"} and evaluations["environment"] > 0
    world = stats["counters"]["world"]
    assert world["resets"] == 4 and world["replays"] + world["direct"] > 0


@pytest.mark.browser
@pytest.mark.slow
def test_transitions_are_real(browser_run: Path) -> None:
    trees = {r["task_id"]: r["tree"]["nodes"] for r in records(browser_run)}
    rows = [json.loads(line) for line in (browser_run / "trajectories/transitions.jsonl").open()]
    assert rows
    for row in rows:
        meta = row["meta"]
        assert meta["imagined"] is False
        node = trees[meta["task_id"]][meta["node"]]
        page = node["state"]["observation"]  # the page the browser showed
        assert row["messages"][-1]["content"] == f"<a11y>\n{page}\n</a11y>"


@pytest.mark.browser
@pytest.mark.slow
def test_a_rerun_searches_nothing_again(browser_run: Path) -> None:
    files = ["trees.jsonl", *(f"trajectories/{k}.jsonl" for k in TRAJECTORY_KINDS)]
    before = {name: (browser_run / name).read_bytes() for name in files}
    resets = json.loads((browser_run / "stats.json").read_text())["counters"]["world"]["resets"]
    result = synthesize_browser(browser_run)
    assert "4 tasks in shard 0/1: 4 done before, 0 to search" in result.stdout + result.stderr
    assert {name: (browser_run / name).read_bytes() for name in files} == before
    stats = json.loads((browser_run / "stats.json").read_text())
    assert len(stats["sessions"]) == 2 and stats["sessions"][1]["tasks_recorded"] == 0
    assert stats["counters"]["world"]["resets"] == resets  # no browser was started


# --- in process -----------------------------------------------------------------------------


@pytest.fixture
def compose_browser(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """``world=browser`` on click-test under seed 0 (in process), with more overrides."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):

        def make(*overrides: str) -> DictConfig:
            fixed = [
                "world=browser",
                "env.tasks=[click-test]",
                "world.seeds=[0]",
                "model.cache=false",
                "logger=none",
                "progress=false",
                f"paths.output_dir={tmp_path}",
            ]
            return compose(config_name="synthesize", overrides=[*fixed, *overrides])

        yield make
    GlobalHydra.instance().clear()


def test_instances_are_tasks_under_seeds(compose_browser: Callable[..., DictConfig]) -> None:
    assert instance_id("click-test", 3) == "click-test@3"
    assert split_instance("click-test@3") == ("click-test", 3)
    assert split_instance("click-test", default_seed=5) == ("click-test", 5)  # no seed in it
    assert split_instance("a@b", default_seed=1) == ("a@b", 1)
    cfg = compose_browser("env.tasks=[click-test,focus-text]", "world.seeds=[2,0,2]")
    tasks = synthesize.select_tasks(cfg)
    assert [t.task_id for t in tasks] == [
        "click-test@2",
        "click-test@0",
        "focus-text@2",
        "focus-text@0",
    ]
    assert all(t.intent == "" for t in tasks)  # the environment says what to do, at reset
    cfg = compose_browser("env.tasks=[click-test,focus-text]", "shard=1", "num_shards=2")
    assert [t.task_id for t in synthesize.select_tasks(cfg)] == ["focus-text@0"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("world.name=browsr", "unknown world 'browsr'"),
        ("env=webarena", "world=browser searches MiniWoB"),
        ("env.tasks=[]", "needs env.tasks"),
        ("world.seeds=[]", "world.seeds"),
        ("env.tasks=[click-tset]", "unknown MiniWoB++ task 'click-tset'"),
    ],
)
def test_a_bad_browser_config_fails_before_anything_starts(
    compose_browser: Callable[..., DictConfig], override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):  # the first thing a run does
        synthesize.select_tasks(compose_browser(override))


@pytest.mark.browser
@pytest.mark.slow
def test_the_browsers_are_stopped_when_the_run_fails(
    compose_browser: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    worlds: list[Any] = []
    workers: list[int | None] = []
    build_world = synthesize.build_world

    def keep(cfg: DictConfig, client: ModelClient) -> Any:
        worlds.append(build_world(cfg, client))
        return worlds[-1]

    async def crash(self: SearchEngine[Any, Any], roots: Any) -> None:
        workers.extend(env.worker_pid for env in worlds[0].pool.envs)
        raise RuntimeError("a bug once the browsers are up")

    monkeypatch.setattr(synthesize, "build_world", keep)
    monkeypatch.setattr(SearchEngine, "arun", crash)
    with pytest.raises(RuntimeError, match="a bug once the browsers are up"):
        synthesize.run(compose_browser(), backend=Website())
    (world,) = worlds
    assert workers and all(pid is not None for pid in workers)  # the root's reset started one
    assert all(env.worker_pid is None for env in world.pool.envs)
    assert not any(pid is not None and psutil.pid_exists(pid) for pid in workers)
    with pytest.raises(RuntimeError, match="closed"), world.pool.lease():
        pass
