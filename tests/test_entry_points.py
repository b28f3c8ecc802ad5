"""The entry points end to end, as a user runs them (subprocesses, real Hydra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_synthesize_prepares_demo_tasks(tmp_path: Path) -> None:
    result = run_entry("synthesize.py", "+experiment=demo", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    pages = json.loads((tmp_path / "pages.json").read_text())
    assert len(pages) == 5 and all(page["searchable"] for page in pages)
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert_no_secret(tmp_path)


def test_synthesize_shards_and_limits(tmp_path: Path) -> None:
    result = run_entry(
        "synthesize.py", "+experiment=demo", "shard=1", "num_shards=2", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    ids = [page["task_id"] for page in json.loads((tmp_path / "pages.json").read_text())]
    assert ids == ["demo-forum-login", "demo-repo-visibility"]


def test_bad_override_fails_with_hydra_message(tmp_path: Path) -> None:
    result = run_entry("synthesize.py", "search.iteratons=5", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Key 'iteratons' not in 'SearchConfig'" in result.stderr


def test_multirun_gives_one_dir_per_job(tmp_path: Path) -> None:
    result = run_entry(
        "synthesize.py",
        "-m",
        "+experiment=demo",
        "search=default,small",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / job / "pages.json").is_file() for job in ("0", "1"))


def test_train_validates_its_data(tmp_path: Path) -> None:
    data = tmp_path / "valuable.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "click [1]"},
        ]
    }
    data.write_text(json.dumps(row) + "\n")
    run_dir = tmp_path / "run"
    result = run_entry(
        "train.py", "logger=none", f"+data.train_files.valuable={data}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "data_summary.json").read_text()) == {"valuable": 1}
    data.write_text(json.dumps(row) + "\n" + json.dumps({"messages": []}) + "\n")
    result = run_entry(
        "train.py", "logger=none", f"+data.train_files.valuable={data}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode != 0
    assert f"{data}:2: field 'messages': expected a non-empty list" in result.stderr


@pytest.mark.parametrize("env", ["miniwob", "webarena"])
def test_evaluate_checks_its_environment(tmp_path: Path, env: str) -> None:
    result = run_entry("evaluate.py", "logger=none", f"env={env}", f"hydra.run.dir={tmp_path}")
    if env == "miniwob":
        assert result.returncode == 0, result.stderr
    else:
        assert "names no tasks" in result.stderr
