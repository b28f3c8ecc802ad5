"""First pages for task configs that have none: each task's ``start_url`` opened in the browser.

``synthesize.py world=model`` imagines every page from a task's first one (``state``), and
WebArena's own configs (``config_files/*.json``, ``test.raw.json``) carry none. This command
opens each task on the user's self-hosted sites (``env=webarena`` with ``env.site_urls``,
placeholders such as ``__SHOPPING__`` moved onto them) and writes the configs back with
``state`` (the canonical accessibility tree, as the environment renders it) and
``state_capture`` (when, from which URL, whether logged in)::

    python -m websynthesis.env.capture taskset.path=config_files env=webarena \\
        env.site_urls.shopping=http://127.0.0.1:7770 out=tasks_with_state.jsonl

Tasks that already have a ``state`` keep it unless ``recapture=true``. Each captured task is
appended to ``<out>.partial`` as it is done, so a killed run resumes where it stopped; ``out``
(JSONL, in the input's task order) is written atomically at the end. A task whose page could
not be opened is written without ``state`` and counted (``synthesize.py`` then names it); the
command exits non-zero when it captured nothing.

A task with ``require_login: true`` is captured logged in to its sites
(:mod:`websynthesis.env.login`, ``env.login``); ``state_capture.logged_in`` says whether it
was, and the tasks captured logged out (``env.login=false``, or no login for their sites)
are listed in the summary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websynthesis.data.tasks import Task, task_from_config
from websynthesis.env.base import EnvError, WebEnv
from websynthesis.io import append_line, atomic_write_text, iter_jsonl, recover_jsonl

log = logging.getLogger(__name__)


@dataclass
class CaptureReport:
    """What a capture run did, by task id."""

    captured: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # had a state already
    resumed: list[str] = field(default_factory=list)  # captured by an earlier, killed run
    failed: dict[str, str] = field(default_factory=dict)
    logged_out: list[str] = field(default_factory=list)  # require_login, captured without

    def to_dict(self) -> dict[str, Any]:
        return {
            "captured": len(self.captured),
            "kept": len(self.kept),
            "resumed": len(self.resumed),
            "failed": dict(self.failed),
            "require_login_captured_logged_out": list(self.logged_out),
        }


def capture(
    tasks: Sequence[Task],
    make_env: Callable[[], WebEnv],
    out: Path,
    *,
    recapture: bool = False,
    login_sites: frozenset[str] = frozenset(),
) -> CaptureReport:
    """Open each task's first page in one browser and write ``out`` (see the module
    docstring); ``make_env`` builds the environment that knows ``tasks``, which logs in to
    ``login_sites``."""
    partial = out.with_name(out.name + ".partial")
    done = _read_partial(partial)
    report = CaptureReport()
    results: dict[str, Task] = {}
    todo = []
    for task in tasks:
        if task.task_id in done:
            results[task.task_id] = done[task.task_id]
            report.resumed.append(task.task_id)
        elif task.state and not recapture:
            results[task.task_id] = task
            report.kept.append(task.task_id)
        else:
            todo.append(task)
    if todo:
        with make_env() as env:
            for task in todo:
                captured = _capture_one(env, task, report, login_sites)
                results[task.task_id] = captured
                if captured.state:
                    append_line(partial, json.dumps(captured.to_config(), ensure_ascii=False))
    lines = "".join(
        json.dumps(results[task.task_id].to_config(), ensure_ascii=False) + "\n" for task in tasks
    )
    atomic_write_text(out, lines)
    partial.unlink(missing_ok=True)
    return report


def _capture_one(
    env: WebEnv, task: Task, report: CaptureReport, login_sites: frozenset[str]
) -> Task:
    try:
        observation = env.reset(task.task_id, 0)
    except (EnvError, ValueError) as error:
        log.error("task %s: its first page could not be opened: %s", task.task_id, error)
        report.failed[task.task_id] = str(error)[-500:]
        return task
    needs_login = bool(task.extra.get("require_login"))
    logged_in = needs_login and bool(login_sites & set(task.sites))
    if needs_login and not logged_in:
        report.logged_out.append(task.task_id)
    report.captured.append(task.task_id)
    extra = dict(task.extra) | {
        "state_capture": {
            "captured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "url": observation.url,
            "logged_in": logged_in if needs_login else None,
        }
    }
    return replace(task, state=observation.text, extra=extra)


def _read_partial(path: Path) -> dict[str, Task]:
    if not path.is_file():
        return {}
    recover_jsonl(path)  # a kill mid-append leaves a torn last line: cut it
    return {
        task.task_id: task
        for line, row in iter_jsonl(path.read_text(encoding="utf-8"), path)
        for task in [task_from_config(row, path=path, line=line)]
    }


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from websynthesis.config import EnvConfig, register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path="../../conf", config_name="capture")
    def run(cfg: DictConfig) -> None:
        from websynthesis.data.tasks import load_tasks
        from websynthesis.env.browsergym_env import login_settings, make_env

        tasks = load_tasks(cfg.taskset.path)
        if cfg.env.name != "webarena":
            raise ValueError("capture opens WebArena task configs: env=webarena")
        env_config = OmegaConf.to_object(cfg.env)
        assert isinstance(env_config, EnvConfig)
        env_config.tasks = [task.task_id for task in tasks]
        login = login_settings(env_config)
        report = capture(
            tasks,
            lambda: make_env(env_config, tasks),
            Path(cfg.out).expanduser(),
            recapture=bool(cfg.recapture),
            login_sites=frozenset(login.logins if login is not None else ()),
        )
        summary = report.to_dict()
        print(json.dumps(summary, indent=2))
        if report.logged_out:
            log.warning(
                "%d tasks need a login and were captured logged out (env.login=false, or no "
                "login for their sites: env.logins)",
                len(report.logged_out),
            )
        if not (report.captured or report.kept or report.resumed):
            raise SystemExit(f"no first page captured: {len(report.failed)} tasks failed")

    run()


if __name__ == "__main__":
    main()
