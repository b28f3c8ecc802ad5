"""First pages captured from a stand-in site, then searched by synthesize.py world=model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from websynthesis.data.tasks import load_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOP = """<title>One Stop Market</title>
<h1>One Stop Market</h1>
<a href="sale.html">Sale</a>
<form><input aria-label="Search" name="q"><button>Search</button></form>"""


def python(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_captured_first_pages_are_what_synthesize_searches(
    tmp_path: Path, serve_dir: Callable[[Path], str], tiny_model_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(SHOP)
    url = serve_dir(site).rstrip("/")
    raw = tmp_path / "test.raw.json"  # WebArena's layout: a JSON list, placeholders, no state
    configs = [
        {"task_id": 0, "intent": "Open the sale", "start_url": "__SHOPPING__/index.html",
         "sites": ["shopping"], "require_login": True, "eval": {"eval_types": ["url_match"]}},
        {"task_id": 1, "intent": "Search for tea", "start_url": "__SHOPPING__/index.html",
         "sites": ["shopping"], "require_login": False},
        {"task_id": 2, "intent": "A page that is not there", "start_url": "__SHOPPING__/gone",
         "sites": ["shopping"]},
    ]  # fmt: skip
    raw.write_text(json.dumps(configs, indent=2))

    refused = python("synthesize.py", f"taskset.path={raw}", "model=tiny", "logger=none",
                     f"hydra.run.dir={tmp_path / 'refused'}")  # fmt: skip
    assert refused.returncode != 0
    assert "none of the 3 tasks" in refused.stderr and "websynthesis.env.capture" in refused.stderr

    out = tmp_path / "tasks_with_state.jsonl"
    captured = python("-m", "websynthesis.env.capture", f"taskset.path={raw}",
                      f"env.site_urls.shopping={url}", f"out={out}", "env.login=false",
                      f"hydra.run.dir={tmp_path / 'capture'}")  # fmt: skip
    assert captured.returncode == 0, captured.stderr[-3000:]
    summary, _ = json.JSONDecoder().raw_decode(captured.stdout, captured.stdout.index("{"))
    assert summary["captured"] == 3 and summary["failed"] == {}  # a 404 is a page too
    assert summary["require_login_captured_logged_out"] == ["0"]
    tasks = {task.task_id: task for task in load_tasks(out)}
    assert list(tasks) == ["0", "1", "2"]
    first = tasks["0"]
    assert first.state is not None and first.state.startswith("Tab 0 (current): One Stop Market")
    assert "link 'Sale'" in first.state and "textbox 'Search'" in first.state
    assert first.extra["state_capture"]["url"] == f"{url}/index.html"
    assert first.extra["state_capture"]["logged_in"] is False
    assert first.eval == {"eval_types": ["url_match"]} and first.start_url.startswith("__SHOP")
    assert not out.with_name(out.name + ".partial").exists()

    run_dir = tmp_path / "synth"
    searched = python(
        "synthesize.py", f"taskset.path={out}", "model=tiny", "logger=none", "progress=false",
        f"paths.cache_dir={tiny_model_path.parents[1]}", "search=small", "search.iterations=2",
        "model.roles.world_model.max_new_tokens=64", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["tasks"]["done"] == 3 and stats["tasks"]["skipped"] == {}
