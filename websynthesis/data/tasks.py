"""Web tasks in the public WebArena config format.

A task is what synthesis starts from and evaluation scores against: an intent,
a start URL, the sites it needs, the accessibility tree of its first page
(``state``, the field the WebSynthesis release adds) and WebArena's ``eval``
spec. Task files come from users and other projects, so every problem is
reported as a :class:`TaskFileError` naming the file, the line and the field
instead of a ``KeyError`` deep inside the search.

Accepted inputs: one WebArena config ``.json`` file (an object or a list of
objects), a directory of them (``config_files/*.json``), or JSONL (one config
per line).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from websynthesis.io import (
    DataFileError,
    check_unicode,
    iter_jsonl,
    list_element_lines,
    read_text,
)
from websynthesis.web.action_sets import action_set

DEMO_TASKS = "demo"
"""The name that selects the task set bundled with the package."""

_KNOWN_EVAL_TYPES = frozenset({"string_match", "url_match", "program_html"})


class TaskFileError(DataFileError):
    """A task file that cannot be read, with its file, line and field."""


@dataclass(frozen=True)
class Task:
    """One web task: what to do, where to start, and how success is judged."""

    task_id: str
    intent: str
    start_url: str = ""
    sites: tuple[str, ...] = ()
    state: str | None = None
    eval: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The verbs its environment takes (websynthesis.web.action_sets); () = WebArena's twelve.
    actions: tuple[str, ...] = ()

    def to_config(self) -> dict[str, Any]:
        """The task back in WebArena config form (round-trips through :func:`task_from_config`)."""
        config = dict(self.extra)
        config.update(
            task_id=_config_task_id(self.task_id),
            intent=self.intent,
            start_url=self.start_url,
            sites=list(self.sites),
            eval=dict(self.eval),
        )
        if self.state is not None:
            config["state"] = self.state
        if self.actions:
            config["actions"] = list(self.actions)
        return config


def task_key(task: Task) -> str:
    """A digest of everything a task file says about ``task`` (its config, ``state``
    included): a run dir keys its records on it, so a task whose input changed (a first page
    captured since, an edited intent) is searched again instead of being taken as done."""
    text = json.dumps(task.to_config(), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _config_task_id(task_id: str) -> int | str:
    return int(task_id) if task_id.isdigit() else task_id


def task_from_config(
    config: Any, *, path: Path | str = "<config>", line: int | None = None
) -> Task:
    """Validate one WebArena config object and build its :class:`Task`."""

    def fail(field_name: str | None, message: str) -> TaskFileError:
        return TaskFileError(path, line, field_name, message)

    if not isinstance(config, dict):
        raise fail(None, f"expected a JSON object, got {type(config).__name__}")
    if "task_id" not in config:
        raise fail("task_id", "missing")
    task_id = config["task_id"]
    if isinstance(task_id, bool) or not isinstance(task_id, int | str) or str(task_id) == "":
        raise fail("task_id", f"expected an integer or a non-empty string, got {task_id!r}")
    intent = config.get("intent")
    if not isinstance(intent, str) or not intent.strip():
        raise fail("intent", "missing" if intent is None else "expected a non-empty string")
    start_url = config.get("start_url", "")
    if not isinstance(start_url, str):
        raise fail("start_url", f"expected a string, got {type(start_url).__name__}")
    sites = config.get("sites", [])
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise fail("sites", "expected a list of strings")
    state = config.get("state")
    if state is not None and not isinstance(state, str):
        raise fail("state", f"expected an accessibility-tree string, got {type(state).__name__}")
    eval_spec = config.get("eval", {})
    if eval_spec is None:
        eval_spec = {}
    _check_eval(eval_spec, fail)
    actions = config.get("actions") or []
    try:
        if not isinstance(actions, list):
            raise ValueError(f"expected a list of action verbs, got {type(actions).__name__}")
        action_set(actions)
    except ValueError as error:
        raise fail("actions", str(error)) from None
    known = {"task_id", "intent", "start_url", "sites", "state", "eval", "actions"}
    return Task(
        task_id=str(task_id),
        intent=intent,
        start_url=start_url,
        sites=tuple(sites),
        state=state,
        eval=eval_spec,
        extra={k: v for k, v in config.items() if k not in known},
        actions=tuple(str(a) for a in actions),
    )


def _check_eval(eval_spec: Any, fail: Any) -> None:
    if not isinstance(eval_spec, dict):
        raise fail("eval", f"expected an object, got {type(eval_spec).__name__}")
    types = eval_spec.get("eval_types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise fail("eval.eval_types", "expected a list of strings")
    unknown = sorted(set(types) - _KNOWN_EVAL_TYPES)
    if unknown:
        raise fail("eval.eval_types", f"unknown evaluator(s) {unknown}")
    answers = eval_spec.get("reference_answers")
    if answers is not None and not isinstance(answers, dict):
        raise fail("eval.reference_answers", "expected an object or null")
    program_html = eval_spec.get("program_html", [])
    if program_html is not None and not isinstance(program_html, list):
        raise fail("eval.program_html", "expected a list")


def load_tasks(source: str | Path) -> list[Task]:
    """Load tasks from a WebArena config file, a directory of them, JSONL, or ``"demo"``.

    Duplicate task ids are an error: resumable synthesis keys its progress on
    them, so two tasks with one id would silently share one result.
    """
    if str(source) == DEMO_TASKS:
        path = Path("websynthesis/data/demo_tasks.jsonl")
        tasks = list(_read_jsonl_text(demo_tasks_text(), path))
        _check_unique(tasks, path)
        return tasks
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.json"), key=_natural_key)
        if not files:
            raise TaskFileError(path, None, None, "directory holds no *.json task configs")
        tasks = [task for f in files for task in _read_json_file(f)]
    elif path.is_file():
        if path.suffix == ".jsonl":
            tasks = list(_read_jsonl_text(_read_text(path), path))
        else:
            tasks = list(_read_json_file(path))
    else:
        raise TaskFileError(path, None, None, "no such file or directory")
    _check_unique(tasks, path)
    return tasks


def demo_tasks_text() -> str:
    """The JSONL text of the demo tasks bundled with the package."""
    return resources.files("websynthesis.data").joinpath("demo_tasks.jsonl").read_text("utf-8")


def _natural_key(path: Path) -> tuple[int, int | str]:
    stem = path.stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def _read_text(path: Path) -> str:
    try:
        return read_text(path)
    except DataFileError as err:
        raise TaskFileError(err.path, err.line, err.field, err.message) from err


def _read_jsonl_text(text: str, path: Path | str) -> Iterator[Task]:
    try:
        for lineno, config in iter_jsonl(text, path):
            yield task_from_config(config, path=path, line=lineno)
    except TaskFileError:
        raise
    except DataFileError as err:
        raise TaskFileError(err.path, err.line, err.field, err.message) from err


def _read_json_file(path: Path) -> Iterator[Task]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskFileError(path, err.lineno, None, f"invalid JSON ({err.msg})") from err
    try:
        check_unicode(data, text, path, None)
    except DataFileError as err:
        raise TaskFileError(err.path, err.line, err.field, err.message) from err
    if isinstance(data, list):
        starts = list_element_lines(text, len(data))
        for index, config in enumerate(data):
            yield task_from_config(config, path=path, line=starts[index])
    else:
        yield task_from_config(data, path=path, line=1)


def _check_unique(tasks: list[Task], path: Path) -> None:
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in seen:
            raise TaskFileError(path, None, "task_id", f"duplicate task id {task.task_id!r}")
        seen.add(task.task_id)


def shard_tasks(tasks: list[Task], shard: int, num_shards: int) -> list[Task]:
    """The tasks of one shard out of ``num_shards``: deterministic, disjoint, covering.

    Round-robin over the loaded order, so cluster job arrays split the work
    evenly whatever the ids look like.
    """
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return tasks[shard::num_shards]


# --- task instances: a MiniWoB++ task under a seed -------------------------------------

_SEED_MARK = "@"


def instance_id(task: str, seed: int) -> str:
    """The task id of ``task`` under ``seed``: ``click-test@3``."""
    return f"{task}{_SEED_MARK}{seed}"


def split_instance(task_id: str, default_seed: int = 0) -> tuple[str, int]:
    """The environment's task name and the seed of ``task_id`` (``default_seed`` without one)."""
    task, mark, seed = task_id.rpartition(_SEED_MARK)
    if mark and task and seed.lstrip("-").isdigit():
        return task, int(seed)
    return task_id, default_seed


def instances(tasks: Sequence[str], seeds: Sequence[int]) -> list[Task]:
    """One :class:`Task` per task and seed, task by task. Their intent is empty: the
    environment gives the instruction at reset (``LiveBrowserWorld.goal``)."""
    return [Task(instance_id(task, int(seed)), intent="") for task in tasks for seed in seeds]
