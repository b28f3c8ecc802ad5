"""The run dir of a synthesis job: ``trees.jsonl`` is the record, the rest is derived from it.

A job may be killed at any moment (``kill -9``, a scheduler's preemption) and restarted on the
same run dir, so:

- Each finished task is **one line** of ``trees.jsonl``: its whole tree and its extracted
  examples, appended with a single ``write`` of the complete line, then ``fsync``. A kill
  mid-write leaves a *torn* last line (no newline); :meth:`RunStore.open` cuts it off, so a
  task is either entirely in the file or not at all (and is searched again).
- ``trajectories/{valuable,rollback,transitions}.jsonl`` are rebuilt from ``trees.jsonl``
  (each atomically) when a run opens the dir, and appended to as trees finish; a kill
  between the two appends is repaired by the next open. So they never hold an example of a
  task that is not in ``trees.jsonl``, nor one twice.
- One job per run dir: an exclusive ``flock`` (released by the OS when the process dies)
  refuses a second process instead of letting two interleave their lines.

The reference wrote each tree only at the end of its search, non-atomically, and took a
file's existence for "done" (R1, R3).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from websynthesis.data.chat import example_from_row
from websynthesis.io import (
    DataFileError,
    append_line,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    read_text,
    recover_jsonl,
)
from websynthesis.synthesis.state import Goal
from websynthesis.web.action_sets import action_names

log = logging.getLogger(__name__)

POLICY_KINDS = ("valuable", "rollback")
"""The trajectory kinds that train the policy (each a training mix of the same name)."""
TRAJECTORY_KINDS = (*POLICY_KINDS, "transitions")
"""What a record keeps of its tree, by kind; each is also ``trajectories/<kind>.jsonl``."""

TREES = "trees.jsonl"
SUPERSEDED = "trees.superseded.jsonl"
TRAJECTORIES = "trajectories"
STATS = "stats.json"
LOCK = ".synthesize.lock"


def tree_record(
    task_id: str,
    task_key: str,
    summary: dict[str, Any],
    tree: dict[str, Any] | None,
    *,
    examples: dict[str, list[dict[str, Any]]] | None = None,
    goal: Goal | None = None,
) -> dict[str, Any]:
    """One line of ``trees.jsonl``: the task (``task_key`` says which version of it was
    searched), its summary, its tree (``None``: skipped) and its examples by kind. ``goal`` is
    kept for a live site's objective, which no task file holds."""
    record: dict[str, Any] = {"task_id": task_id, "task_key": task_key}
    if goal is not None:
        record["goal"] = {
            "objective": goal.objective,
            "allowed_sites": [*goal.allowed_sites],
            "action_set": action_names(goal.actions),
        }
    return record | {
        "summary": summary,
        "tree": tree,
        "examples": examples or {kind: [] for kind in TRAJECTORY_KINDS},
    }


def check_tree_record(record: Any, path: Path, line: int) -> None:
    """Raise a :class:`DataFileError` naming the field unless ``record`` has the shape
    :func:`tree_record` writes and a resume reads (the statistics, the trajectory files)."""

    def fail(name: str | None, message: str) -> DataFileError:
        return DataFileError(path, line, name, message)

    if not isinstance(record, dict):
        raise fail(None, f"not a tree record (a JSON {type(record).__name__})")
    if not isinstance(record.get("task_id"), str):
        raise fail("task_id", "expected a string")
    if not isinstance(record.get("task_key"), str | None):
        raise fail("task_key", "expected a string or null")
    summary, tree, examples = record.get("summary"), record.get("tree"), record.get("examples")
    if not isinstance(summary, dict):
        raise fail("summary", "expected an object")
    if not isinstance(examples, dict):
        raise fail("examples", "expected an object of trajectory kinds")
    for kind in TRAJECTORY_KINDS:
        rows = examples.get(kind)
        if not isinstance(rows, list):
            raise fail(f"examples.{kind}", "expected a list")
        for index, row in enumerate(rows):
            try:
                example_from_row(row, path=path, line=line)
            except DataFileError as error:
                raise fail(f"examples.{kind}[{index}].{error.field or ''}", error.message) from None
    if tree is None:
        return
    if not isinstance(tree, dict) or not isinstance(tree.get("stats"), dict):
        raise fail("tree", "expected an object with the search's stats (or null: skipped)")
    if not all(_number(v) for v in tree["stats"].values()):
        raise fail("tree.stats", "expected numbers")
    if not isinstance(summary.get("solved"), bool):
        raise fail("summary.solved", "expected true or false")
    if not isinstance(summary.get("stop_reason"), str):
        raise fail("summary.stop_reason", "expected a string")
    if not _number(summary.get("nodes")):
        raise fail("summary.nodes", "expected a number")
    counts = summary.get("examples")
    if not isinstance(counts, dict):
        raise fail("summary.examples", "expected an object")
    for kind in TRAJECTORY_KINDS:
        if not _number(counts.get(kind)):
            raise fail(f"summary.examples.{kind}", "expected a number")
    dropped = counts.get("dropped")
    if not isinstance(dropped, dict) or not all(_number(v) for v in dropped.values()):
        raise fail("summary.examples.dropped", "expected an object of numbers")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def previous_stats(store: RunStore) -> dict[str, Any]:
    """What a restart carries over from the last ``stats.json``: its summed ``counters`` and
    its ``sessions``; a file of another shape is ignored with a warning, like an unreadable
    one (the records, not the statistics, are what a resume must not lose)."""
    stats = store.read_stats() or {}
    counters, sessions = stats.get("counters"), stats.get("sessions")
    if not _counters_shape(counters) or not (
        isinstance(sessions, list) and all(isinstance(s, dict) for s in sessions)
    ):
        if stats:
            log.warning("ignoring %s: not the statistics of a run", store.stats)
        return {"counters": {}, "sessions": []}
    return {"counters": counters, "sessions": list(sessions)}


def _counters_shape(counters: Any) -> bool:
    """Whether ``counters`` is what :meth:`Synthesis._counters` writes: a tree of counts
    (objects of numbers, strings, lists of them, null) with the reports' objects where the
    statistics read them."""
    if not isinstance(counters, dict) or not _counter_tree(counters):
        return False
    usage, outcomes = counters.get("usage") or {}, counters.get("outcomes") or {}
    if not isinstance(usage, dict) or not isinstance(outcomes, dict):
        return False
    total, roles = usage.get("total", {}), usage.get("roles", {})  # as run_stats reads them
    if not isinstance(total, dict) or not isinstance(roles, dict):
        return False
    if not all(isinstance(role, dict) for role in [*roles.values(), *outcomes.values()]):
        return False
    return all(isinstance(role.get("attempts") or {}, dict) for role in outcomes.values())


def _counter_tree(value: Any, depth: int = 0) -> bool:
    if isinstance(value, dict):
        return depth < 8 and all(_counter_tree(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(isinstance(v, str | int | float) for v in value)
    return value is None or isinstance(value, str | int | float)


class RunDirBusy(RuntimeError):
    """Another process is writing this run dir."""


class RunStore:
    """Reads and writes one run dir (see the module docstring)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.dir = Path(run_dir)
        self.trees = self.dir / TREES
        self.stats = self.dir / STATS
        self._lock_fd: int | None = None

    def trajectory_path(self, kind: str) -> Path:
        return self.dir / TRAJECTORIES / f"{kind}.jsonl"

    def open(self) -> list[dict[str, Any]]:
        """Lock the dir, repair it after a kill, and return the finished tasks' records."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        torn = recover_jsonl(self.trees)
        if torn:
            log.warning(
                "%s: cut a torn last line (%d bytes) left by a killed run", self.trees, torn
            )
        records = self._read()
        self._materialise(records)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished task: its line first, then its examples."""
        append_line(self.trees, json.dumps(record, ensure_ascii=False))
        for kind in TRAJECTORY_KINDS:
            rows = record["examples"][kind]
            if rows:
                path = self.trajectory_path(kind)
                append_line(path, "\n".join(json.dumps(row, ensure_ascii=False) for row in rows))

    def supersede(self, task_ids: set[str]) -> list[dict[str, Any]]:
        """Retire the records of ``task_ids`` (their input changed, or they were recorded as
        skipped by an older run): each is appended to ``trees.superseded.jsonl`` first, then
        ``trees.jsonl`` is rewritten without them (atomically) and the trajectories rebuilt.
        A kill in between leaves the record in both files; the next open retires it again
        (so the archive may hold it twice; ``trees.jsonl`` never loses a record unarchived).
        Returns the records that remain."""
        records = self._read()
        retired = [record for record in records if record["task_id"] in task_ids]
        if not retired:
            return records
        for record in retired:
            append_line(self.dir / SUPERSEDED, json.dumps(record, ensure_ascii=False))
        kept = [record for record in records if record["task_id"] not in task_ids]
        atomic_write_text(
            self.trees, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        )
        self._materialise(kept)
        log.info("%s: %d records retired to %s", self.trees, len(retired), SUPERSEDED)
        return kept

    def read_stats(self) -> dict[str, Any] | None:
        """The previous ``stats.json``, if a run left one."""
        if not self.stats.exists():
            return None
        try:
            data = json.loads(self.stats.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("ignoring unreadable %s: %s", self.stats, error)
            return None
        if not isinstance(data, dict):
            log.warning("ignoring %s: not a JSON object", self.stats)
            return None
        return data

    def write_stats(self, stats: dict[str, Any]) -> None:
        atomic_write_json(self.stats, stats)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(f"another synthesize.py is writing {self.dir}") from None
        self._lock_fd = fd

    def _read(self) -> list[dict[str, Any]]:
        if not self.trees.exists():
            return []
        text = read_text(self.trees)
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for line, record in iter_jsonl(text, self.trees):
            check_tree_record(record, self.trees, line)
            if record["task_id"] in seen:
                message = "%s:%d: task %s is already recorded; keeping the first"
                log.warning(message, self.trees, line, record["task_id"])
                continue
            seen.add(record["task_id"])
            records.append(record)
        return records

    def _materialise(self, records: Iterable[dict[str, Any]]) -> None:
        """Rewrite the trajectory files from the records (each atomically)."""
        lines: dict[str, list[str]] = {kind: [] for kind in TRAJECTORY_KINDS}
        for record in records:
            for kind in TRAJECTORY_KINDS:
                lines[kind] += [json.dumps(r, ensure_ascii=False) for r in record["examples"][kind]]
        for kind in TRAJECTORY_KINDS:
            atomic_write_text(self.trajectory_path(kind), "".join(f"{ln}\n" for ln in lines[kind]))
