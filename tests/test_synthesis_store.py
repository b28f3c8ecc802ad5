"""The run dir: one line per task, torn lines repaired, trajectories rebuilt, one writer.

Regressions for the reference's persistence bugs: R1 (a tree written only at the end of its
search; here each finished task is durable at once), R2 (an output dir never created), R3
(non-atomic writes and "the file exists" taken for "done").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from websynthesis.io import DataFileError, append_line, read_jsonl, recover_jsonl
from websynthesis.synthesis import TRAJECTORY_KINDS, RunDirBusy, RunStore, merge_counts


def record(task_id: str, examples: int = 1) -> dict[str, Any]:
    """A record in the shape the pipeline writes (``tree_record``) and a resume checks."""
    messages = [{"role": "user", "content": task_id}, {"role": "assistant", "content": "x"}]
    row = {"messages": messages, "meta": {"task_id": task_id}}
    counts = {kind: examples for kind in TRAJECTORY_KINDS} | {"dropped": {}}
    return {
        "task_id": task_id,
        "skipped": None,
        "summary": {"stop_reason": "iterations", "solved": False, "nodes": 1, "examples": counts},
        "tree": {"nodes": [], "stats": {"expansions": 1}},
        "examples": {kind: [row] * examples for kind in TRAJECTORY_KINDS},
    }


def lines(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path)]


def test_r2_the_run_dir_and_every_output_file_are_created(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "new" / "run")
    assert store.open() == []
    assert all(store.trajectory_path(kind).read_text() == "" for kind in TRAJECTORY_KINDS)
    store.close()


def test_r1_each_task_is_durable_as_soon_as_it_is_appended(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open()
    store.append(record("a", examples=2))
    assert [r["task_id"] for r in lines(tmp_path / "trees.jsonl")] == ["a"]
    assert all(len(lines(store.trajectory_path(kind))) == 2 for kind in TRAJECTORY_KINDS)
    store.append(record("b", examples=0))
    assert [r["task_id"] for r in lines(tmp_path / "trees.jsonl")] == ["a", "b"]
    store.close()


def test_r3_a_torn_last_line_is_cut_and_its_task_searched_again(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open()
    store.append(record("a"))
    store.close()
    whole = json.dumps(record("b"))
    with (tmp_path / "trees.jsonl").open("a") as handle:
        handle.write(whole[: len(whole) // 2])  # a kill in the middle of the write
    again = RunStore(tmp_path)
    assert [r["task_id"] for r in again.open()] == ["a"]
    assert (tmp_path / "trees.jsonl").read_text().endswith("\n")
    again.append(record("b"))
    assert [r["task_id"] for r in lines(tmp_path / "trees.jsonl")] == ["a", "b"]
    again.close()


def test_trajectories_are_rebuilt_from_the_trees_after_a_kill_between_appends(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path)
    store.open()
    store.append(record("a"))
    store.close()
    append_line(tmp_path / "trees.jsonl", json.dumps(record("b")))  # killed before its examples
    with store.trajectory_path("rollback").open("a") as handle:
        handle.write('{"messages": [{"ro')  # and a torn example line elsewhere
    again = RunStore(tmp_path)
    again.open()
    for kind in TRAJECTORY_KINDS:
        assert [r["meta"]["task_id"] for r in lines(again.trajectory_path(kind))] == ["a", "b"]
    again.close()


def test_a_task_recorded_twice_is_kept_once(tmp_path: Path) -> None:
    append_line(tmp_path / "trees.jsonl", json.dumps(record("a")))
    append_line(tmp_path / "trees.jsonl", json.dumps(record("a")))
    store = RunStore(tmp_path)
    assert [r["task_id"] for r in store.open()] == ["a"]
    assert len(lines(store.trajectory_path("valuable"))) == 1
    store.close()


def test_a_corrupt_complete_line_is_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    (tmp_path / "trees.jsonl").write_text('{"task_id": "a"\n')
    with pytest.raises(DataFileError, match=r"trees\.jsonl:1"):
        RunStore(tmp_path).open()


def test_one_process_per_run_dir(tmp_path: Path) -> None:
    first = RunStore(tmp_path)
    first.open()
    with pytest.raises(RunDirBusy):
        RunStore(tmp_path).open()
    first.close()
    second = RunStore(tmp_path)
    second.open()  # the lock went with the first writer
    second.close()


def test_recover_reports_what_it_cut(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    assert recover_jsonl(path) == 0
    path.write_bytes(b'{"a": 1}\n{"b"')
    assert recover_jsonl(path) == 4 and path.read_bytes() == b'{"a": 1}\n'


def test_counters_of_sessions_add_up() -> None:
    before = {"usage": {"roles": {"policy": {"calls": 2, "cost_usd": None}}}, "wall_time_s": 1.5}
    now = {
        "usage": {"roles": {"policy": {"calls": 3, "cost_usd": 0.5}, "reward": {"calls": 1}}},
        "batching": {"batches": 4, "largest_batch": 8},
        "wall_time_s": 2.0,
    }
    merged = merge_counts(merge_counts(before, now), {"batching": {"largest_batch": 5}})
    assert merged["usage"]["roles"] == {
        "policy": {"calls": 5, "cost_usd": 0.5},
        "reward": {"calls": 1},
    }
    assert merged["batching"] == {"batches": 4, "largest_batch": 8}
    assert merged["wall_time_s"] == 3.5
