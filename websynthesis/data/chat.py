"""Chat-format training examples: ``{"messages": [...], "meta": {...}}`` per JSONL line.

synthesize.py writes trajectories in this format and train.py reads it
directly, so the prompt a policy is trained on is byte-for-byte the prompt it
sees at inference. Files also come from other tools, so a bad row is a
:class:`~websynthesis.io.DataFileError` naming file, line and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websynthesis.io import DataFileError, atomic_write_text, read_jsonl

ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class ChatExample:
    """One conversation; the assistant turns are what training learns to write."""

    messages: tuple[dict[str, str], ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The JSONL row (see the module docstring); :func:`example_from_row` reads it back."""
        return {"messages": list(self.messages), "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_row(), ensure_ascii=False)


def example_from_row(row: Any, *, path: Path | str, line: int) -> ChatExample:
    """Validate one decoded JSONL row."""

    def fail(field_name: str | None, message: str) -> DataFileError:
        return DataFileError(path, line, field_name, message)

    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("messages", "expected a non-empty list")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise fail(where, "expected an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise fail(f"{where}.role", f"expected one of {sorted(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise fail(f"{where}.content", "expected a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("messages", "no assistant turn to learn from")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise fail("meta", "expected an object")
    clean = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return ChatExample(messages=clean, meta=meta)


def read_chat_jsonl(path: Path | str) -> Iterator[ChatExample]:
    """Every example of a chat-format JSONL file, validated."""
    for line, row in read_jsonl(path):
        yield example_from_row(row, path=path, line=line)


def write_chat_jsonl(path: Path | str, examples: Iterable[ChatExample]) -> int:
    """Write examples atomically, one per line; returns how many."""
    lines = [example.to_json() + "\n" for example in examples]
    atomic_write_text(path, "".join(lines))
    return len(lines)
