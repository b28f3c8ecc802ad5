"""Append-only JSONL logs that survive a kill, as synthesis's run dir does.

``episodes.jsonl``, ``transitions.jsonl`` and ``wmla.jsonl`` grow while an evaluation runs and
are what a rerun resumes from. Each record is one line written with a single ``write`` and
fsynced (:func:`~websynthesis.synthesis.store.append_line`), so a finished line survives a
crash; a kill mid-write leaves a torn last line, which opening the log cuts off
(:func:`~websynthesis.synthesis.store.recover_jsonl`). Readers skip lines that are not JSON
objects instead of refusing the whole file: these logs are evidence, not inputs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from websynthesis.io import append_line, recover_jsonl

log = logging.getLogger(__name__)


class JsonlLog:
    """An append-only JSONL file; safe to share between coroutines and threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        torn = recover_jsonl(self.path)
        if torn:
            log.warning("%s: cut a torn last line (%d bytes) left by a killed run", self.path, torn)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, durably."""
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            append_line(self.path, line)


def read_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """Every JSON object line of a JSONL log; other lines are skipped and logged."""
    for _, record in read_numbered_records(path):
        yield record


def read_numbered_records(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`read_records` with each record's line number."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a torn or invalid line", path, number)
                continue
            if isinstance(record, dict):
                yield number, record
