"""Files that survive a kill: atomic writes, fsynced appends, line-addressed JSONL reading.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


class DataFileError(ValueError):
    """An input file (or one row of it) that cannot be used, with its file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` so readers never see a partial file."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``write`` writes to the handle it is given: a temporary file
    in the same directory (``.<name>.*.tmp``), fsynced, then renamed over ``path``. A kill
    before the rename leaves the old file whole (and the temporary one behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_temporaries(path: Path | str) -> list[Path]:
    """The temporary files :func:`atomic_write` left next to ``path`` when killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def append_line(path: Path | str, line: str) -> None:
    """Append ``line`` (one JSON document, no newline) with one write, then fsync."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only on a short write
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_jsonl(path: Path | str) -> int:
    """Cut a torn last line off ``path``; returns the bytes removed (0 if none)."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as handle:
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        if keep < size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return size - keep


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
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which JSON
    # written with ensure_ascii=False may carry inside strings.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataFileError(path, lineno, None, f"invalid JSON ({err.msg})") from err
        check_unicode(value, raw, path, lineno)
        yield lineno, value


def check_unicode(value: Any, raw: str, path: Path | str, line: int | None) -> None:
    """Raise a :class:`DataFileError` if ``value`` (parsed from the JSON text ``raw``) holds
    a lone surrogate escape such as ``"\\ud800"``: valid JSON, but no Unicode text, and so a
    crash at the next write of anything made from it."""
    if "\\ud" not in raw.lower():
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        message = "a lone surrogate escape (not Unicode text)"
        raise DataFileError(path, line, None, message) from None


def list_element_lines(text: str, count: int) -> list[int]:
    """The line on which each of the first ``count`` elements of the JSON list in ``text``
    starts, so errors in a ``[{...}, {...}]`` file can name a line, not just an index."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    position = text.index("[") + 1
    for _ in range(count):
        while text[position] in " \t\r\n,":
            position += 1
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)
    return lines


def read_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """:func:`iter_jsonl` over a file."""
    return iter_jsonl(read_text(path), path)
