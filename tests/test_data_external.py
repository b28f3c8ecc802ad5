"""Outside data: released SFT lists, chat JSONL and OS-Genesis triples; exact errors."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.data.external import (
    ExternalFormat,
    ExternalSource,
    Instruction,
    OnError,
    load_chat,
    load_examples,
    load_os_genesis,
    load_sft,
    load_websynthesis_rollback,
)
from websynthesis.data.transitions import read_transitions
from websynthesis.io import DataFileError
from websynthesis.web.actions import parse_action

BEFORE = "Tab 0 (current): Shop\n\n[1] RootWebArea 'Shop' focused: True\n\t[1234] link 'Sale'"
AFTER = "Tab 0 (current): Sale\n\n[1] RootWebArea 'Sale' focused: True\n\t[77] heading 'Sale'"


def write(path: Path, rows: list[Any], *, lines: bool) -> Path:
    if lines:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows, indent=2))
    return path


# --- {instruction, input, output} -------------------------------------------------------


def test_sft_rows_become_chat_examples(tmp_path: Path) -> None:
    rows = [
        {"instruction": "You are a web agent.", "input": "OBSERVATION: ...", "output": "click"},
        {"input": "Describe the page.", "output": "A shop."},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": None, "input": "Q", "output": "A", "history": []},
    ]
    path = write(tmp_path / "sft.json", rows, lines=False)
    loaded = load_sft(path)
    assert loaded.skipped == []
    assert [e.messages for e in loaded.items] == [
        ({"role": "system", "content": "You are a web agent."},
         {"role": "user", "content": "OBSERVATION: ..."},
         {"role": "assistant", "content": "click"}),
        ({"role": "user", "content": "Describe the page."},
         {"role": "assistant", "content": "A shop."}),
        ({"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}),
        ({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}),
    ]  # fmt: skip
    assert loaded.items[0].meta == {"source": str(path)}
    prefixed = load_sft(path, instruction=Instruction.PREFIX).items[0]
    assert prefixed.messages[0] == {
        "role": "user",
        "content": "You are a web agent.\n\nOBSERVATION: ...",
    }


def test_a_bad_row_of_a_json_list_names_its_line_and_index(tmp_path: Path) -> None:
    rows = [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"input": "e"}]
    path = write(tmp_path / "sft.json", rows, lines=False)
    with pytest.raises(DataFileError) as caught:
        load_sft(path)
    assert str(caught.value) == f"{path}:10: field '[2].output': missing"
    assert path.read_text().split("\n")[9].strip() == "{"
    loaded = load_sft(path, on_error=OnError.SKIP)
    assert len(loaded.items) == 2 and [str(e) for e in loaded.skipped] == [str(caught.value)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("text", "expected a JSON object, got str"),
        ({"input": "x", "output": "  "}, "field 'output': expected a non-empty string"),
        ({"input": 3, "output": "y"}, "field 'input': expected a string, got int"),
        ({"instruction": ["a"], "input": "x", "output": "y"},
         "field 'instruction': expected a string, got list"),
        ({"input": "", "output": "y"},
         "field 'input': no input and no instruction: nothing to ask"),
    ],
)  # fmt: skip
def test_bad_sft_lines_name_file_line_and_field(tmp_path: Path, row: Any, message: str) -> None:
    path = write(tmp_path / "sft.jsonl", [{"input": "a", "output": "b"}, row], lines=True)
    with pytest.raises(DataFileError) as caught:
        load_sft(path)
    assert str(caught.value) == f"{path}:2: {message}"


def test_json_lines_under_a_json_name_and_broken_files(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.json", [{"input": "a", "output": "b"}] * 2, lines=True)
    assert len(load_sft(path).items) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[{"input": "a",\n "output": ]')
    with pytest.raises(DataFileError, match=r"broken.json:2: invalid JSON \(Expecting value\)"):
        load_sft(broken, on_error=OnError.SKIP)  # a file that is not JSON is never skipped
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"input": "a", "output": "b"}\n{oops\n\n{"input": "c", "output": "d"}\n')
    loaded = load_sft(lines, on_error=OnError.SKIP)
    assert len(loaded.items) == 2
    assert [str(e) for e in loaded.skipped] == [
        f"{lines}:2: invalid JSON (Expecting property name enclosed in double quotes)"
    ]
    with pytest.raises(DataFileError, match="no such file"):
        load_sft(tmp_path / "missing.json")


# --- chat JSONL -------------------------------------------------------------------------


def test_chat_rows(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "meta": {"task_id": "1"}}  # fmt: skip
    path = write(tmp_path / "chat.jsonl", [good, {"messages": [{"role": 1}]}], lines=True)
    with pytest.raises(DataFileError) as caught:
        load_chat(path)
    assert str(caught.value) == (
        f"{path}:2: field 'messages[0].role': expected one of ['assistant', 'system', 'user']"
    )
    loaded = load_chat(path, on_error=OnError.SKIP)
    assert loaded.items[0].meta == {"source": str(path), "task_id": "1"}
    assert len(loaded.skipped) == 1
    listed = write(tmp_path / "chat.json", [good, {"messages": []}], lines=False)
    with pytest.raises(DataFileError) as caught:
        load_chat(listed)
    assert str(caught.value) == f"{listed}:17: field '[1].messages': expected a non-empty list"


# --- OS-Genesis triples -----------------------------------------------------------------


def triple(**changes: Any) -> dict[str, Any]:
    row = {
        "website_name": "shopping",
        "url": "http://shop.local/",
        "a11y_before": BEFORE,
        "action": ["click [1234]", "1234", {"backend_id": 99, "text": "Sale"}],
        "a11y_after": AFTER,
        "screen_before": "a.png",
    }
    return {key: value for key, value in (row | changes).items() if value is not None}


# --- released files, as their writers write them -----------------------------------------


def reference_node(action: str, thinking: str, depth: int, state: str, trace: str) -> dict:
    """A node as the reference WebSynthesis ``saving_traceable_traj`` dumps it (merge.py)."""
    raw = f"{thinking} In summary, the next action I will perform is ```{action}```"
    return {"action": raw, "execute_action": action, "state": state, "trace": trace,
            "depth": depth, "numVisits": 3, "V": 1.0, "v_desc": 0.0,
            "isFullyExpanded": False, "isTerminal": False, "thinking": thinking,
            "reflection": ""}  # fmt: skip


def test_reference_websynthesis_rollback_rows_become_reflect_and_correct(tmp_path: Path) -> None:
    step = "<step-1>\nOBSERVATION:\n[1234] link 'Sale'\nREASON FOR ACTION:\nSee the sale.\n"
    parent = reference_node("click [1234]", "See the sale.", 1, AFTER, step)
    failed_trace = step + "<step-2>\n...click [9]\n</step-2>\n"
    failure = reference_node("click [9]", "Wrong link.", 2, BEFORE, failed_trace)
    correct = reference_node("click [77]", "The heading.", 2, AFTER, step + "<step-2>...")
    row = {"intent": "Open the sale", "failure": failure, "parent": parent, "correct": correct}
    path = tmp_path / "webmcts-ttraj"
    path.mkdir()
    (path / "0.json").write_text(json.dumps([row, row], indent=4))  # json.dump as merge.py

    loaded = load_examples(
        ExternalSource.from_config({"path": str(path), "format": "websynthesis_rollback",
                                    "mix": "rollback"})
    )  # fmt: skip
    assert len(loaded.items) == 4
    reflect, fix = loaded.items[:2]
    assert reflect.meta["stage"] == "reflect" and fix.meta["stage"] == "correct"
    asked = reflect.messages[0]["content"]
    assert asked.startswith("OBJECTIVE:\nOpen the sale\n\nTRAJECTORY:\n" + failed_trace)
    assert asked.endswith(f"OBSERVATION:\n{BEFORE}\n\nWhat's the next action?")
    assert (
        reflect.messages[-1]["content"]
        == "In summary, the next action I will perform is ```go_back```"
    )
    went_back = fix.messages[0]["content"]
    assert "ACTION:\ngo_back\n</step-2>" in went_back and f"OBSERVATION:\n{AFTER}" in went_back
    assert fix.messages[-1]["content"] == correct["action"]

    bad = dict(row, correct=dict(correct, execute_action="fly [2]"))
    (path / "1.json").write_text(json.dumps([row, bad], indent=4))
    with pytest.raises(DataFileError, match=r"1.json:\d+: field '\[1\]\.correct\.execute_action'"):
        load_websynthesis_rollback(path)
    missing = dict(row, parent={k: v for k, v in parent.items() if k != "state"})
    (path / "1.json").write_text(json.dumps([missing]))
    with pytest.raises(DataFileError, match=r"field '\[0\]\.parent\.state'"):
        load_websynthesis_rollback(path)


def test_webevolver_rows_in_both_shapes_read_as_chat(tmp_path: Path) -> None:
    system = {"role": "system", "content": "You predict the accessibility tree of the next page."}
    turns = [
        system,
        {"role": "user", "content": 'Initial operation: CallWeb(query="sale")\n\nOBJECTIVE: sale'},
        {"role": "assistant", "content": BEFORE},
        {"role": "user", "content": "Action: ```click [1234]```\nOBJECTIVE: sale"},
        {"role": "assistant", "content": AFTER},
    ]
    path = tmp_path / "webevolver_world_model_sft.jsonl"
    path.write_text(json.dumps(turns) + "\n" + json.dumps({"messages": turns}) + "\n")
    loaded = load_chat(path)
    assert [len(e.messages) for e in loaded.items] == [5, 5]
    assert loaded.items[0].messages == loaded.items[1].messages
    assert loaded.items[0].messages[-1]["content"] == AFTER
    path.write_text(json.dumps(turns) + "\n" + json.dumps([{"role": "pilot", "content": "x"}]))
    with pytest.raises(DataFileError, match=r"jsonl:2: field 'messages\[0\]\.role'"):
        load_chat(path)


def test_os_genesis_triples_become_real_transitions(tmp_path: Path) -> None:
    walks = tmp_path / "walks"
    walks.mkdir()
    write(walks / "0001.json", [triple(), triple(action="type [1234] [shoes]")], lines=False)
    write(walks / "0002.json", [triple(website_name=None)], lines=False)
    (walks / "notes.txt").write_text("ignored")
    loaded = load_os_genesis(walks)
    assert [t.action for t in loaded.items] == [
        parse_action("click [1234]"),
        parse_action("type [1234] [shoes] [1]"),
        parse_action("click [1234]"),
    ]
    first = loaded.items[0]
    assert (first.observation, first.next_observation) == (BEFORE, AFTER)
    assert first.task_id == "shopping" and not first.imagined and first.history == ()
    assert first.source == str(walks / "0001.json")
    assert loaded.items[2].task_id == "http://shop.local/"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": []}, "field '[1].action': expected an action string or a non-empty list"),
        ({"action": [5]}, "field '[1].action[0]': expected an action string, got int"),
        ({"action": "wait"}, "field '[1].action': not an action: "),
        ({"a11y_after": None}, "field '[1].a11y_after': expected a non-empty accessibility-tree "
                               "string (missing)"),
        ({"a11y_before": {"tree": 1}}, "field '[1].a11y_before': expected a non-empty "
                                       "accessibility-tree string (got dict)"),
        ({"url": 3}, "field '[1].url': expected a string, got int"),
    ],
)  # fmt: skip
def test_bad_triples_name_file_line_and_field(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "walk.json", [triple(), triple(**changes)], lines=False)
    line = 1 + path.read_text().split("\n").index("  {", 2)
    with pytest.raises(DataFileError) as caught:
        load_os_genesis(path)
    assert str(caught.value).startswith(f"{path}:{line}: {message}")
    skipped = load_os_genesis(path, on_error=OnError.SKIP)
    assert len(skipped.items) == 1 and len(skipped.skipped) == 1


# --- sources ----------------------------------------------------------------------------


def test_external_sources_are_checked() -> None:
    source = ExternalSource.from_config({"path": "x.json", "format": "sft", "mix": "valuable"})
    assert source == ExternalSource("x.json", ExternalFormat.SFT, "valuable")
    for bad, match in [
        ({"path": "x", "format": "csv", "mix": "valuable"}, "'csv' is not a valid"),
        ({"format": "sft", "mix": "valuable"}, "'path'"),
        ({"path": "x", "format": "sft"}, "need `mix`"),
        ({"path": "x", "format": "os_genesis", "mix": "world_model"}, "take none"),
        ({"path": "x", "format": "chat", "mix": "m", "on_error": "ignore"}, "'ignore'"),
    ]:
        with pytest.raises(ValueError, match=match):
            ExternalSource.from_config(bad)
    with pytest.raises(ValueError, match="hold transitions"):
        load_examples(ExternalSource("x", ExternalFormat.OS_GENESIS))


# --- property: only DataFileError, whatever the rows hold -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
plausible = st.sampled_from(
    ["", " ", "click [1234]", "type [1] [x]", "go_back", "wait", BEFORE, AFTER, "<a11y>x</a11y>",
     "user", "assistant", "system", f"<a11y>\n{AFTER}\n</a11y>"]
)  # fmt: skip
field_values = json_values | plausible | st.lists(plausible | json_values, max_size=3)
messages = st.lists(
    st.fixed_dictionaries({}, optional={"role": field_values, "content": field_values}),
    max_size=3,
)
KEYS = ["input", "output", "instruction", "a11y_before", "a11y_after", "action", "website_name",
        "url", "observation", "next_observation", "history", "task_id", "imagined", "source",
        "messages", "meta", "role", "content"]  # fmt: skip
CHAT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"<a11y>{AFTER}</a11y>"}]
RAW = {"observation": BEFORE, "action": "click [1234]", "next_observation": AFTER,
       "history": ["go_back"], "task_id": 3, "imagined": False, "source": "s"}  # fmt: skip
GOOD_ROWS = [
    {"instruction": "i", "input": "q", "output": "a"},
    {"messages": CHAT, "meta": {"task_id": "1"}},
    triple(),
    RAW,
    {"messages": CHAT, "meta": {k: v for k, v in RAW.items() if k != "next_observation"}},
]
MISSING = object()


def corrupt(row: dict[str, Any], key: str, value: Any, nested: bool) -> dict[str, Any]:
    """A good row with one field (of the row, of its meta, or of a message) replaced or cut."""
    row = json.loads(json.dumps(row))
    target = row
    if nested and isinstance(row.get("meta"), dict):
        target = row["meta"]
    elif nested and isinstance(row.get("messages"), list):
        target = row["messages"][-1]
    if value is MISSING:
        target.pop(key, None)
    else:
        target[key] = value
    return row


corrupted = st.builds(
    corrupt,
    st.sampled_from(GOOD_ROWS),
    st.sampled_from(KEYS),
    field_values | st.just(MISSING) | messages,
    st.booleans(),
)
rows = json_values | corrupted | st.sampled_from(GOOD_ROWS)

LOADERS: dict[str, Callable[[Path], object]] = {
    "chat": load_chat,
    "sft": load_sft,
    "os_genesis": load_os_genesis,
    "websynthesis_rollback": load_websynthesis_rollback,
    "transitions": lambda path: list(read_transitions(path)),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, min_size=1, max_size=4), st.booleans(), st.sampled_from(sorted(LOADERS)))
def test_loaders_raise_nothing_but_data_file_errors(
    found: list[Any], lines: bool, loader: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / ("rows.jsonl" if lines else "rows.json"), found, lines=lines)
        if loader == "transitions" and not lines:
            path = write(Path(folder) / "rows.jsonl", found, lines=True)
        try:
            LOADERS[loader](path)
        except DataFileError:
            pass
        if loader != "transitions":
            loaded = LOADERS[loader](path, on_error=OnError.SKIP)  # type: ignore[call-arg]
            per_row = 2 if loader == "websynthesis_rollback" else 1  # reflect, then correct
            assert len(loaded.items) + per_row * len(loaded.skipped) == per_row * len(found)
