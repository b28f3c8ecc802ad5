"""Transitions: one page, one action, the page it led to; what page-dynamics data is made of.

World-model examples and TextUI state-transition examples are built from them, and the
pages in them feed captioning and element functionality. Producers:

* evaluate.py records every real browser step (``transitions.jsonl`` in its run dir);
* synthesize.py records every step the world model imagined
  (``trajectories/transitions.jsonl``), flagged ``imagined``;
* :mod:`websynthesis.data.external` reads OS-Genesis' raw web triples into them.

A JSONL file may hold either form, row by row:

* **raw**: ``{"observation": str, "action": str, "next_observation": str}`` plus optional
  ``"history"`` (earlier actions, oldest first, as action strings), ``"task_id"`` (string or
  integer), ``"imagined"`` (bool) and ``"source"`` (string);
* **chat**: a chat-format example (:mod:`websynthesis.data.chat`) whose ``meta`` holds the same
  keys. ``meta.next_observation`` may be left out: the tree in the last assistant turn (inside
  ``<a11y>…</a11y>``, read by the world model's own parser) is then the next page.

The three page/action keys are required; a row without ``imagined`` takes the reader's
default (synthesize.py's folder is read as imagined). Bad rows are
:class:`~websynthesis.io.DataFileError` naming file, line and field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websynthesis.data.chat import ROLES, ChatExample, example_from_row
from websynthesis.io import DataFileError, atomic_write_text, read_jsonl
from websynthesis.roles.parsing import parse_world_model
from websynthesis.web.action_sets import ActionSet, action_set
from websynthesis.web.actions import Action, ActionParseError, parse_action

Fail = Callable[[str | None, str], DataFileError]


@dataclass(frozen=True)
class Transition:
    """A step on a web page: ``observation`` --``action``--> ``next_observation`` (tree texts)."""

    observation: str
    action: Action
    next_observation: str
    history: tuple[Action, ...] = ()
    task_id: str = ""
    imagined: bool = False
    source: str = ""

    def to_row(self) -> dict[str, Any]:
        """The raw form (see the module docstring); :func:`transition_from_row` reads it back."""
        return {
            "observation": self.observation,
            "action": self.action.to_string(),
            "next_observation": self.next_observation,
            "history": [action.to_string() for action in self.history],
            "task_id": self.task_id,
            "imagined": self.imagined,
            "source": self.source,
        }


def failer(path: Path | str, line: int | None, prefix: str = "") -> Fail:
    """A factory of errors at one row; ``prefix`` (e.g. ``[3].``) locates rows of a JSON list."""

    def fail(field: str | None, message: str) -> DataFileError:
        where = f"{prefix}{field}" if field else (prefix.rstrip(".") or None)
        return DataFileError(path, line, where, message)

    return fail


def action_field(value: Any, field: str, fail: Fail) -> Action:
    """An action string parsed by the one action grammar, or an error naming ``field``."""
    if not isinstance(value, str):
        raise fail(field, f"expected an action string, got {type(value).__name__}")
    try:
        return parse_action(value)
    except ActionParseError as error:
        raise fail(field, f"not an action: {error}") from None


def action_set_field(value: Any, fail: Fail, field: str = "action_set") -> ActionSet:
    """A recorded action set (a list of verbs; absent: WebArena's), or an error naming it."""
    if value is not None and not isinstance(value, list):
        raise fail(field, f"expected a list of action verbs, got {type(value).__name__}")
    try:
        return action_set(value)
    except ValueError as error:
        raise fail(field, str(error)) from None


def page_field(row: dict[str, Any], key: str, fail: Fail) -> str:
    """A required, non-blank accessibility-tree text."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"got {type(value).__name__}"
        raise fail(key, f"expected a non-empty accessibility-tree string ({got})")
    return value


def chat_example(row: Any, fail: Fail, *, path: Path | str, line: int | None) -> ChatExample:
    """:func:`~websynthesis.data.chat.example_from_row`, its errors located by ``fail`` (which
    knows a JSON list's element index), also for roles that are not strings.

    (``example_from_row`` tests ``role in ROLES`` on any JSON value, so a list or object role
    is a ``TypeError`` there; it is checked here first.)
    """
    messages = row.get("messages") if isinstance(row, dict) else None
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and not isinstance(message.get("role"), str):
            raise fail(f"messages[{index}].role", f"expected one of {sorted(ROLES)}")
    try:
        return example_from_row(row, path=path, line=line or 0)
    except DataFileError as error:
        raise fail(error.field, error.message) from None


def transition_from_row(
    row: Any, *, path: Path | str, line: int, imagined: bool = False
) -> Transition:
    """Validate one row in either form; ``imagined`` is the default for rows that do not say."""
    fail = failer(path, line)
    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        example = chat_example(row, fail, path=path, line=line)
        fields, prefix = dict(example.meta), "meta."
        if "next_observation" not in fields:
            fields["next_observation"] = _predicted_page(example, fail)
    else:
        fields, prefix = row, ""
    fail = failer(path, line, prefix)
    history = fields.get("history", [])
    if not isinstance(history, list):
        raise fail("history", "expected a list of action strings")
    task_id = fields.get("task_id", "")
    if isinstance(task_id, bool) or not isinstance(task_id, str | int):
        raise fail("task_id", f"expected a string or an integer, got {type(task_id).__name__}")
    flag = fields.get("imagined", imagined)
    if not isinstance(flag, bool):
        raise fail("imagined", f"expected true or false, got {type(flag).__name__}")
    source = fields.get("source", str(path))
    if not isinstance(source, str):
        raise fail("source", f"expected a string, got {type(source).__name__}")
    return Transition(
        observation=page_field(fields, "observation", fail),
        action=action_field(fields.get("action"), "action", fail),
        next_observation=page_field(fields, "next_observation", fail),
        history=tuple(action_field(a, f"history[{i}]", fail) for i, a in enumerate(history)),
        task_id=str(task_id),
        imagined=flag,
        source=source,
    )


def _predicted_page(example: ChatExample, fail: Fail) -> str:
    """The tree in the last assistant turn, read as a world-model answer is read."""
    index = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    parsed = parse_world_model(example.messages[index]["content"])
    if not parsed.ok or parsed.value is None:
        raise fail(f"messages[{index}].content", f"no usable next page ({parsed.failure})")
    return parsed.value.render()


def read_transitions(path: Path | str, *, imagined: bool = False) -> Iterator[Transition]:
    """Every transition of a JSONL file, validated (``imagined``: the default flag)."""
    for line, row in read_jsonl(path):
        yield transition_from_row(row, path=path, line=line, imagined=imagined)


def write_transitions(path: Path | str, transitions: Iterable[Transition]) -> int:
    """Write the raw form atomically, one per line; returns how many."""
    lines = [json.dumps(t.to_row(), ensure_ascii=False) + "\n" for t in transitions]
    atomic_write_text(path, "".join(lines))
    return len(lines)
