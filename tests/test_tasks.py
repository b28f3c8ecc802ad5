"""Task loading: every input form, and errors that name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from websynthesis.data.tasks import (
    Task,
    TaskFileError,
    load_tasks,
    shard_tasks,
    task_from_config,
)

CONFIG = {
    "sites": ["shopping"],
    "task_id": 7,
    "require_login": True,
    "start_url": "http://localhost:7770",
    "intent": "What is the price of the cheapest kettle?",
    "eval": {
        "eval_types": ["string_match"],
        "reference_answers": {"must_include": ["$19.99"]},
        "reference_url": "",
        "program_html": [],
    },
    "state": "Tab 0 (current): Shop\n\n[1] RootWebArea 'Shop' focused: True\n\t[2] link 'Kettles'",
}


def test_demo_tasks_load_with_first_pages() -> None:
    tasks = load_tasks("demo")
    assert len(tasks) >= 4
    assert len({t.task_id for t in tasks}) == len(tasks)
    for task in tasks:
        assert task.intent and task.state and task.state.startswith("Tab 0 (current): ")
        assert task.eval["eval_types"]


def test_single_json_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "7.json"
    path.write_text(json.dumps(CONFIG))
    (task,) = load_tasks(path)
    assert task == Task(
        task_id="7",
        intent=CONFIG["intent"],
        start_url=CONFIG["start_url"],
        sites=("shopping",),
        state=CONFIG["state"],
        eval=CONFIG["eval"],
        extra={"require_login": True},
    )
    assert task.to_config() == CONFIG
    assert task_from_config(task.to_config()) == task


def test_directory_is_read_in_numeric_order(tmp_path: Path) -> None:
    for task_id in (10, 2, 1):
        (tmp_path / f"{task_id}.json").write_text(json.dumps({**CONFIG, "task_id": task_id}))
    assert [t.task_id for t in load_tasks(tmp_path)] == ["1", "2", "10"]


def test_json_list_and_jsonl(tmp_path: Path) -> None:
    configs = [{**CONFIG, "task_id": i} for i in range(3)]
    (tmp_path / "all.json").write_text(json.dumps(configs, indent=2))
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(c) for c in configs) + "\n\n")
    assert [t.task_id for t in load_tasks(tmp_path / "all.json")] == ["0", "1", "2"]
    assert [t.task_id for t in load_tasks(tmp_path / "all.jsonl")] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda c: c.pop("intent"), "intent", "missing"),
        (lambda c: c.update(intent="  "), "intent", "non-empty"),
        (lambda c: c.pop("task_id"), "task_id", "missing"),
        (lambda c: c.update(task_id=True), "task_id", "integer"),
        (lambda c: c.update(sites="shopping"), "sites", "list of strings"),
        (lambda c: c.update(state=["x"]), "state", "accessibility-tree string"),
        (lambda c: c.update(start_url=3), "start_url", "string"),
        (lambda c: c.update(eval=[]), "eval", "object"),
        (lambda c: c["eval"].update(eval_types=["html_match"]), "eval.eval_types", "unknown"),
        (lambda c: c["eval"].update(reference_answers="x"), "eval.reference_answers", "object"),
    ],
)
def test_bad_field_names_file_line_and_field(tmp_path: Path, mutate, field, fragment) -> None:
    bad = json.loads(json.dumps(CONFIG))
    mutate(bad)
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(CONFIG) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert fragment in str(err) and f"{path}:3: field '{field}'" in str(err)


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(CONFIG) + "\n{not json\n")
    with pytest.raises(TaskFileError, match=r"tasks\.jsonl:2: invalid JSON"):
        load_tasks(path)
    listed = tmp_path / "list.json"
    listed.write_text('[\n  {"task_id": 1, "intent": "a"},\n  {"task_id": 2}\n]')
    with pytest.raises(TaskFileError, match=r"list\.json:3: field 'intent': missing"):
        load_tasks(listed)


def test_duplicate_ids_and_missing_paths(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text((json.dumps(CONFIG) + "\n") * 2)
    with pytest.raises(TaskFileError, match="duplicate task id '7'"):
        load_tasks(path)
    with pytest.raises(TaskFileError, match="no such file"):
        load_tasks(tmp_path / "absent.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskFileError, match=r"no \*\.json"):
        load_tasks(tmp_path / "empty")


def test_shards_are_disjoint_and_cover() -> None:
    tasks = [Task(task_id=str(i), intent="x") for i in range(11)]
    shards = [shard_tasks(tasks, i, 3) for i in range(3)]
    ids = [t.task_id for shard in shards for t in shard]
    assert sorted(ids, key=int) == [t.task_id for t in tasks]
    assert shards[0] == shard_tasks(tasks, 0, 3)
    with pytest.raises(ValueError):
        shard_tasks(tasks, 3, 3)


def test_shared_webarena_corpus_loads(webarena_tasks_path: Path) -> None:
    tasks = load_tasks(webarena_tasks_path)
    assert len(tasks) == 644
    assert all(t.state and t.intent and t.eval.get("eval_types") for t in tasks)


def test_jsonl_lines_are_split_on_newlines_only(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({**CONFIG, "intent": "a\u2028b"}, ensure_ascii=False) + "\n")
    (task,) = load_tasks(path)
    assert task.intent == "a\u2028b"
