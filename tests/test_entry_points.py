"""The entry points end to end, as a user runs them (subprocesses, real Hydra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_synthesis_pipeline import assert_valid_run

from websynthesis.data.tasks import load_tasks
from websynthesis.io import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789abcdef"


def run_entry(script: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_no_secret(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="ignore"), path


def tree_ids(run_dir: Path) -> list[str]:
    return [row["task_id"] for _, row in read_jsonl(run_dir / "trees.jsonl")]


@pytest.mark.slow
def test_synthesize_searches_the_demo_tasks(tmp_path: Path, tiny_model_path: Path) -> None:
    result = run_entry(
        "synthesize.py", "+experiment=demo", "search=small", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    assert_valid_run(tmp_path, [task.task_id for task in load_tasks("demo")])
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["tasks"]["done"] == 5 and stats["errors"] == []
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert_no_secret(tmp_path)


@pytest.mark.slow
def test_synthesize_shards_and_limits(tmp_path: Path, tiny_model_path: Path) -> None:
    result = run_entry(
        "synthesize.py", "+experiment=demo", "shard=1", "num_shards=2", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    # trees are written in the order they finish
    assert sorted(tree_ids(tmp_path)) == ["demo-forum-login", "demo-repo-visibility"]


def test_bad_override_fails_with_hydra_message(tmp_path: Path) -> None:
    result = run_entry("synthesize.py", "search.iteratons=5", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Key 'iteratons' not in 'SearchConfig'" in result.stderr


@pytest.mark.slow
def test_multirun_gives_one_dir_per_job(tmp_path: Path, tiny_model_path: Path) -> None:
    result = run_entry(
        "synthesize.py",
        "-m",
        "+experiment=demo",
        "search=default,small",
        "taskset.limit=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    assert all(tree_ids(tmp_path / job) == ["demo-bookshop-search"] for job in ("0", "1"))


@pytest.mark.slow
def test_train_checks_its_data_then_trains(tmp_path: Path) -> None:
    data = tmp_path / "valuable.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "click [1]"},
        ]
    }
    data.write_text(json.dumps(row) + "\n")
    run_dir = tmp_path / "run"
    common = (
        "+experiment=bc_valuable",
        "logger=none",
        "trainer.max_steps=1",
        f"+data.train_files.valuable={data}",
        f"hydra.run.dir={run_dir}",
    )
    result = run_entry("train.py", *common)
    assert result.returncode == 0, result.stderr
    done = json.loads((run_dir / "stages" / "1-bc" / "done.json").read_text())
    assert done["data"]["train"]["kept"] == 1 and done["global_step"] == 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert_no_secret(run_dir)
    data.write_text(json.dumps(row) + "\n" + json.dumps({"messages": []}) + "\n")
    result = run_entry("train.py", *common[:-1], f"hydra.run.dir={tmp_path / 'bad'}")
    assert result.returncode != 0
    assert f"{data}:2: field 'messages': expected a non-empty list" in result.stderr
    assert "Loading weights" not in result.stderr  # failed before any model was loaded


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env=miniwob", "env.tasks=[no-such-task]"], "unknown MiniWoB++ task 'no-such-task'"),
        (["env=webarena"], "names no tasks"),
        (["eval=world_model"], "eval=world_model needs eval.transitions=PATH"),
    ],
)
def test_evaluate_refuses_bad_configs_before_any_browser(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """The real runs (episodes, summary, resume, WMLA) are in tests/test_eval_e2e.py."""
    result = run_entry("evaluate.py", "logger=none", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "episodes.jsonl").exists()


@pytest.mark.parametrize(
    ("script", "overrides", "expected"),
    [
        ("coevolve.py", ["rounds=2"], "rounds: 2"),
        ("serve.py", ["port=9001"], "port: 9001"),
    ],
)
def test_the_root_entry_points_compose_their_configs(
    script: str, overrides: list[str], expected: str
) -> None:
    """``coevolve.py`` and ``serve.py`` are thin Hydra apps at the root like the other three:
    ``--cfg job`` composes their config with the overrides and prints it."""
    result = run_entry(script, "--cfg", "job", *overrides)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert SECRET not in result.stdout
