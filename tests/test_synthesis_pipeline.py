"""synthesize.py end to end: in process on the scripted site, and as the contract command with
the tiny model (subprocesses, real Hydra): one tree per task, valid trajectories, SIGKILL and
resume, the same trees from the same seed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from test_synthesis_world_policy import HOME, OBJECTIVE, SITE, Website

from websynthesis.config import register_configs
from websynthesis.data.chat import read_chat_jsonl
from websynthesis.data.tasks import load_tasks
from websynthesis.io import read_jsonl
from websynthesis.pipelines.synthesize import NoFirstPages, run
from websynthesis.search import SearchResult
from websynthesis.synthesis import TRAJECTORY_KINDS, WebSearchPolicy, WebState
from websynthesis.web.actions import extract_action, parse_action
from websynthesis.web.observation import parse_axtree

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO_ROOT / "conf")
POLICY_PAGE = re.compile(r"\nOBSERVATION:\n(.*)\n\nWhat's the next action\?\Z", re.S)
WORLD_PAGE = re.compile(r"(?:\A|\n)CURRENT PAGE:\n(.*)\n\nACTION:\n(.+)\n\nWrite", re.S)
# The contract command, with a budget that keeps each run to seconds on 2 CPU cores.
CONTRACT = [
    "model=tiny",
    "search.iterations=3",
    "search.branch=2",
    "search.max_depth=2",
    "model.roles.world_model.max_new_tokens=64",
    "model.roles.world_model.max_retries=0",
]


# --- helpers ------------------------------------------------------------------------------------


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(run_dir / "trees.jsonl")]


def assert_valid_run(run_dir: Path, task_ids: list[str]) -> int:
    """One complete tree per task; trajectories = the trees' examples, each action valid."""
    lines = records(run_dir)
    assert sorted(r["task_id"] for r in lines) == sorted(task_ids)
    for line in lines:
        task_id = line["task_id"]
        tree = SearchResult.from_dict(line["tree"], decode_state(task_id), parse_action)
        assert len(tree.root.walk()) == len(line["tree"]["nodes"]) == line["summary"]["nodes"]
        assert all(n.state.task_id == task_id for n in tree.root.walk())
    checked = 0
    for kind in TRAJECTORY_KINDS:
        path = run_dir / "trajectories" / f"{kind}.jsonl"
        expected = [row for line in lines for row in line["examples"][kind]]
        examples = list(read_chat_jsonl(path))
        assert [{"messages": list(e.messages), "meta": e.meta} for e in examples] == expected
        for example in examples:
            user, target = example.messages[-2]["content"], example.messages[-1]["content"]
            if kind == "transitions":
                found = WORLD_PAGE.search(user)
                assert found, user[-300:]
                page, action = parse_axtree(found[1]), parse_action(found[2])
            else:
                found = POLICY_PAGE.search(user)
                assert found, user[-300:]
                page, action = parse_axtree(found[1]), extract_action(target)
            assert action.validate(page), (kind, example.meta, action)
            checked += 1
    return checked


def decode_state(task_id: str) -> Any:
    return lambda data: WebState.from_json(task_id, data)


def trees_without_timing(run_dir: Path) -> dict[str, Any]:
    out = {}
    for line in records(run_dir):
        tree = dict(line["tree"])
        tree.pop("elapsed_s")
        out[line["task_id"]] = tree
    return out


def synthesize(*overrides: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "synthesize.py"), "logger=none", *overrides]


def run_synthesize(*overrides: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        synthesize(*overrides), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def website_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "website.jsonl"
    configs = [
        {"task_id": i, "intent": f"{OBJECTIVE} ({i})", "start_url": f"{SITE}/", "state": HOME}
        for i in (1, 2, 3)
    ]
    configs.append({"task_id": 4, "intent": "A task without a first page", "sites": ["x"]})
    path.write_text("".join(json.dumps(c) + "\n" for c in configs))
    return path


@pytest.fixture(scope="module")
def webarena_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tasks in WebArena's config format (integer ids, sites, eval), first pages included."""
    path = tmp_path_factory.mktemp("webarena") / "tasks.jsonl"
    rows = []
    for number, task in enumerate(load_tasks("demo")[:4], start=700):
        config = task.to_config() | {"task_id": number, "require_login": False}
        rows.append(json.dumps(config))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def hydra_compose() -> Iterator[Any]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):

        def make(run_dir: Path, *overrides: str) -> DictConfig:
            fixed = [
                "logger=none",
                "progress=false",
                "paths.root_dir=.",
                f"paths.output_dir={run_dir}",
            ]
            return compose(config_name="synthesize", overrides=[*fixed, *overrides])

        yield make
    GlobalHydra.instance().clear()


# --- in process, scripted site ------------------------------------------------------------------


def test_pipeline_writes_trees_trajectories_and_stats(
    hydra_compose: Any, website_tasks: Path, tmp_path: Path
) -> None:
    cfg = hydra_compose(
        tmp_path,
        f"taskset.path={website_tasks}",
        "model.cache=false",
        "search.iterations=8",
        "search.concurrent_trees=2",
        "skip_without_state=true",
    )
    backend = Website()
    stats = run(cfg, backend=backend)
    assert backend.closed
    assert stats["tasks"] == {
        "total": 4,
        "done": 3,
        "searched": 3,
        "solved": 3,
        "skipped": {"4": "the task has no first page (state)"},
        "stop_reasons": {"iterations": 3},
        "errors": 0,
    }
    checked = assert_valid_run(tmp_path, ["1", "2", "3"])  # 4 is not done: it had no page
    assert stats["examples"]["valuable"] == 6 and stats["examples"]["rollback"] >= 6
    assert checked == sum(stats["examples"][kind] for kind in TRAJECTORY_KINDS)
    assert set(stats["calls"]) == {"policy", "world_model", "reward", "reflection"}
    assert stats["tokens"]["policy"]["prompt"] > 0 and stats["batching"]["batches"] > 0
    assert stats["parse_failures"]["world_model"]["no_tree"] >= 1  # "I cannot tell."
    assert stats["per_task"]["1"]["solved"] and stats["per_task"]["1"]["stop_reason"]
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_tasks_without_a_first_page_are_counted_up_front_and_never_taken_as_done(
    hydra_compose: Any, website_tasks: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "test.raw.json"  # WebArena's own configs: no state anywhere
    raw.write_text(json.dumps([{"task_id": i, "intent": f"task {i}", "sites": ["shopping"],
                                "start_url": "http://shop"} for i in range(3)]))  # fmt: skip
    named = r"none of the 3 tasks .* `python -m websynthesis.env.capture taskset.path="
    with pytest.raises(NoFirstPages, match=named):
        run(hydra_compose(tmp_path / "none", f"taskset.path={raw}"), backend=Website())
    assert not (tmp_path / "none" / "trees.jsonl").exists()  # failed before any search
    with pytest.raises(
        NoFirstPages,
        match=r"1 of 4 tasks have no first page \(state\): 4\. .*skip_without_state=true",
    ):
        run(hydra_compose(tmp_path / "some", f"taskset.path={website_tasks}"), backend=Website())

    # An older run recorded task 4 as skipped, and task 1 under another intent: both are
    # searched again (their records retired to trees.superseded.jsonl), 2 and 3 are kept.
    out = tmp_path / "resume"
    quick = ["model.cache=false", "search.iterations=2", "skip_without_state=true"]
    run(hydra_compose(out, f"taskset.path={website_tasks}", *quick), backend=Website())
    kept = {r["task_id"]: r for r in records(out)}
    old = [dict(kept["1"], task_key="0123456789abcdef"), kept["2"], kept["3"],
           {"task_id": "4", "skipped": "the task has no first page (state)", "summary": {},
            "tree": None, "examples": {kind: [] for kind in TRAJECTORY_KINDS}}]  # fmt: skip
    (out / "trees.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    fixed = tmp_path / "fixed.jsonl"
    configs = [json.loads(line) for line in website_tasks.read_text().splitlines()]
    configs[3] |= {"start_url": f"{SITE}/", "state": HOME}
    fixed.write_text("".join(json.dumps(c) + "\n" for c in configs))
    stats = run(hydra_compose(out, f"taskset.path={fixed}", *quick), backend=Website())
    assert stats["tasks"]["done"] == 4 and stats["tasks"]["skipped"] == {}
    order = [r["task_id"] for r in records(out)]
    assert order[:2] == ["2", "3"] and sorted(order[2:]) == ["1", "4"]
    assert records(out)[:2] == [kept["2"], kept["3"]]  # untouched, not searched again
    retired = [json.loads(line) for line in (out / "trees.superseded.jsonl").open()]
    assert [r["task_id"] for r in retired] == ["1", "4"]
    assert_valid_run(out, ["1", "2", "3", "4"])


def test_a_spent_token_budget_leaves_unstarted_tasks_for_the_next_run(
    hydra_compose: Any, website_tasks: Path, tmp_path: Path
) -> None:
    tight = ["budget.tokens=1", "search.concurrent_trees=1", "taskset.limit=3"]
    cfg = hydra_compose(tmp_path, f"taskset.path={website_tasks}", "model.cache=false", *tight)
    stats = run(cfg, backend=Website())
    assert [r["task_id"] for r in records(tmp_path)] == ["1"]  # 2 and 3 never started
    assert stats["per_task"]["1"]["stop_reason"] == "budget"
    cfg = hydra_compose(
        tmp_path,
        f"taskset.path={website_tasks}",
        "model.cache=false",
        "taskset.limit=3",
        "search.concurrent_trees=1",
    )
    stats = run(cfg, backend=Website())
    assert [r["task_id"] for r in records(tmp_path)] == ["1", "2", "3"]
    assert len(stats["sessions"]) == 2 and stats["sessions"][1]["resumed_with"] == 1
    assert stats["counters"]["usage"]["total"]["calls"] > stats["sessions"][1]["tasks_recorded"]
    assert_valid_run(tmp_path, ["1", "2", "3"])


def test_a_tree_that_crashes_is_reported_and_not_recorded(
    hydra_compose: Any, website_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate = WebSearchPolicy.evaluate

    async def buggy(self: WebSearchPolicy, context: Any, new_state: WebState) -> Any:
        if context.payload.task_id == "2":
            raise RuntimeError("a bug in the search policy")
        return await evaluate(self, context, new_state)

    monkeypatch.setattr(WebSearchPolicy, "evaluate", buggy)
    cfg = hydra_compose(
        tmp_path, f"taskset.path={website_tasks}", "model.cache=false", "taskset.limit=3"
    )
    with pytest.raises(RuntimeError, match="the search of 1 tasks failed"):
        run(cfg, backend=Website())
    assert [r["task_id"] for r in records(tmp_path)] == ["1", "3"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    (error,) = stats["errors"]
    assert error["task_id"] == "2" and "a bug in the search policy" in error["error"]
    monkeypatch.undo()
    cfg = hydra_compose(
        tmp_path, f"taskset.path={website_tasks}", "model.cache=false", "taskset.limit=3"
    )
    run(cfg, backend=Website())  # the rerun searches the failed task only
    assert [r["task_id"] for r in records(tmp_path)] == ["1", "3", "2"]


# --- the contract command with the tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def contract_run(
    webarena_tasks: Path, tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path
) -> Path:
    run_dir = tmp_path_factory.mktemp("contract")
    run_synthesize(
        f"taskset.path={webarena_tasks}",
        *CONTRACT,
        "search.concurrent_trees=4",
        "model.batching.enabled=true",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir


@pytest.mark.slow
def test_contract_command_gives_one_valid_tree_per_task(contract_run: Path) -> None:
    assert_valid_run(contract_run, ["700", "701", "702", "703"])
    stats = json.loads((contract_run / "stats.json").read_text())
    assert stats["tasks"]["done"] == 4 and stats["errors"] == []
    assert stats["calls"]["policy"] >= 1 and stats["tokens"]["world_model"]["completion"] > 0
    assert stats["batching"]["largest_batch"] > 1
    assert (contract_run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_same_seed_with_the_cache_gives_identical_trees(
    contract_run: Path, webarena_tasks: Path, tmp_path: Path
) -> None:
    run_synthesize(
        f"taskset.path={webarena_tasks}",
        *CONTRACT,
        "search.concurrent_trees=4",
        "model.batching.enabled=true",
        f"hydra.run.dir={tmp_path}",
    )
    assert trees_without_timing(tmp_path) == trees_without_timing(contract_run)
    cache = json.loads((tmp_path / "stats.json").read_text())["cache"]
    assert cache["misses"] == 0 and cache["hits"] > 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(
    webarena_tasks: Path, tmp_path: Path
) -> None:
    # One request at a time, no cache: slow enough to be killed between trees; the same
    # seed and the same requests, so the resumed run must end with the trees of a run that
    # was never killed. (A batched run is no reference: another batch composition changes
    # the last bits of the logits, and so, rarely, a near-tied token.)
    settings = [
        f"taskset.path={webarena_tasks}",
        *CONTRACT,
        "search.concurrent_trees=1",
        "model.batching.enabled=false",
        "model.cache=false",
    ]
    whole = tmp_path / "whole"
    run_synthesize(*settings, f"hydra.run.dir={whole}")
    tmp_path = tmp_path / "killed"
    command = synthesize(*settings, f"hydra.run.dir={tmp_path}")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    trees = tmp_path / "trees.jsonl"
    deadline = time.monotonic() + 240
    while not (trees.exists() and trees.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None, "the run ended before its first tree"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    written = len(records(tmp_path))
    assert 1 <= written < 4, "killed after the end: nothing was interrupted"
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_valid_run(tmp_path, ["700", "701", "702", "703"])
    assert [r["task_id"] for r in records(tmp_path)][:written] == ["700", "701", "702", "703"][
        :written
    ]
    assert trees_without_timing(tmp_path) == trees_without_timing(whole)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [s["resumed_with"] for s in stats["sessions"]][-1] == written


def test_the_slurm_job_array_launcher_composes() -> None:
    register_configs()
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=synthesize_slurm", "shard=3", "num_shards=4"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("synthesize", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.array_parallelism == 64
    assert (cfg.shard, cfg.num_shards) == (3, 4)
