"""The pages the benchmarks read: the shared WebArena corpus when it is there, else the
pages the package ships (so ``make bench`` runs on a clone that has no ``../shared``).

- shared: ``../shared/data/webarena/tasks.jsonl`` (644 WebArena tasks with their first
  page), next to the project's clone on the machines it is built on;
- bundled: the demo tasks' first pages and the recorded MiniWoB++ transitions' pages
  (``websynthesis/data/``): about a hundred real pages, smaller than WebArena's.

Each bench prints which one it measured: the two give different absolute numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from websynthesis.config import package_data
from websynthesis.data.tasks import demo_tasks_text

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/webarena/tasks.jsonl"


def page_tasks(path: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """``[{task_id, intent, state}]`` from ``path`` (a tasks JSONL with first pages), else the
    shared corpus, else the bundled pages; and the name of what was read."""
    if path is None and SHARED.is_file():
        path = SHARED
    if path is not None:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [row for row in rows if row and row.get("state")], str(path)
    tasks = [json.loads(line) for line in demo_tasks_text().splitlines() if line.strip()]
    recorded = Path(package_data("miniwob_transitions.jsonl"))
    for number, line in enumerate(recorded.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        for key in ("observation", "next_observation"):
            tasks.append({"task_id": f"miniwob-{number}-{key}", "intent": row["objective"],
                          "state": row[key]})  # fmt: skip
    return [task for task in tasks if task.get("state")], "bundled pages (websynthesis/data/)"
