"""Chat-format JSONL: what synthesize.py writes and train.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from websynthesis.data.chat import ChatExample, read_chat_jsonl, write_chat_jsonl
from websynthesis.io import DataFileError

GOOD = {
    "messages": [
        {"role": "system", "content": "You are a web agent."},
        {"role": "user", "content": "OBJECTIVE: find the price"},
        {
            "role": "assistant",
            "content": "In summary, the next action I will perform is ```stop [$3]```",
        },
    ],
    "meta": {"task_id": "7", "kind": "valuable"},
}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "valuable.jsonl"
    example = ChatExample(messages=tuple(GOOD["messages"]), meta=GOOD["meta"])
    assert write_chat_jsonl(path, [example, example]) == 2
    assert list(read_chat_jsonl(path)) == [example, example]


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ([1], None, "expected a JSON object"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "expected an object"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role", "expected one of"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "expected one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "a string"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "no assistant turn"),
        ({**GOOD, "meta": []}, "meta", "expected an object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row, field, fragment) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataFileError) as info:
        list(read_chat_jsonl(path))
    assert (info.value.line, info.value.field) == (2, field)
    assert fragment in str(info.value) and str(path) in str(info.value)
