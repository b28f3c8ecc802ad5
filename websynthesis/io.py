"""Files that survive a kill: atomic writes and line-addressed JSONL reading.

Long jobs (synthesis, training) are killed by schedulers and users; a file is
therefore either its old content or its new content, never half of each
(write to a temporary file in the same directory, fsync, rename). Readers of
JSONL name the file and line of a bad row, because these files come from
other tools and from models.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataFileError(ValueError):
    """An input file (or one row of it) that cannot be used, with its file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_text(path: Path | str) -> str:
    """A whole UTF-8 file; a missing or non-UTF-8 file is a :class:`DataFileError`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataFileError(path, None, None, "no such file") from err
    except UnicodeDecodeError as err:
        raise DataFileError(path, None, None, f"not UTF-8 text ({err.reason})") from err


def iter_jsonl(text: str, path: Path | str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad JSON names its line."""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataFileError(path, lineno, None, f"invalid JSON ({err.msg})") from err


def read_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """:func:`iter_jsonl` over a file."""
    return iter_jsonl(read_text(path), path)
