"""Success rate, pass@k, mean steps and error counts, per task and overall.

pass@k is the unbiased estimator of Chen et al. (2021): from ``n >= k`` attempts of a task of
which ``c`` succeeded, ``1 - C(n-c, k) / C(n, k)``, the chance that ``k`` attempts drawn
without replacement contain a success. It is reported only for tasks with ``n >= k``; the
overall pass@k is the mean over those tasks (their number is reported next to it), and the
overall success rate is the mean of the per-task rates, so it equals the overall pass@1.

Episodes that ended in an environment error (a crashed browser, a timeout) or could not be
scored say nothing about the agent: they are counted apart (``errors``, ``unscored``) and left
out of ``n``. Agent failures (unparseable actions, the step limit) are ordinary failures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """``1 - C(n-c, k) / C(n, k)``: the chance that ``k`` of ``n`` attempts hold a success."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(frozen=True)
class Outcome:
    """What metrics need of one episode: ``success`` is ``None`` when it was not scored."""

    task: str
    success: bool | None
    steps: int
    error: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Outcome:
        """From an ``episodes.jsonl`` line."""
        return cls(
            task=str(record["task"]),
            success=record.get("success"),
            steps=int(record.get("steps") or 0),
            error=record.get("error"),
        )

    @property
    def counted(self) -> bool:
        """Whether the episode is an attempt of the agent (not an env error, and scored)."""
        return self.error is None and self.success is not None


@dataclass(frozen=True)
class TaskMetrics:
    """One task's (or, for the overall row, all tasks') numbers."""

    n: int
    successes: int
    success_rate: float | None
    pass_at: dict[int, float]
    mean_steps: float | None
    errors: int
    unscored: int
    tasks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "n": self.n,
            "successes": self.successes,
            "success_rate": self.success_rate,
            **{f"pass@{k}": value for k, value in sorted(self.pass_at.items())},
            "mean_steps": self.mean_steps,
            "errors": self.errors,
            "unscored": self.unscored,
        }


def task_metrics(outcomes: Sequence[Outcome], ks: Iterable[int]) -> TaskMetrics:
    """Metrics of one task's episodes; pass@k for each ``k <= n``."""
    counted = [o for o in outcomes if o.counted]
    n, c = len(counted), sum(bool(o.success) for o in counted)
    return TaskMetrics(
        n=n,
        successes=c,
        success_rate=c / n if n else None,
        pass_at={k: pass_at_k(n, c, k) for k in sorted(set(ks)) if 1 <= k <= n},
        mean_steps=_mean([o.steps for o in counted]),
        errors=sum(o.error is not None for o in outcomes),
        unscored=sum(o.error is None and o.success is None for o in outcomes),
    )


def summarize(outcomes: Iterable[Outcome], ks: Iterable[int]) -> dict[str, Any]:
    """``{"tasks": {task: metrics}, "overall": metrics, "pass_at_tasks": {k: tasks}}``."""
    ks = sorted(set(ks))
    by_task: defaultdict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_task[outcome.task].append(outcome)
    per_task = {task: task_metrics(items, ks) for task, items in sorted(by_task.items())}
    rows = list(per_task.values())
    rated = [row.success_rate for row in rows if row.success_rate is not None]
    pass_at, covered = {}, {}
    for k in ks:
        values = [row.pass_at[k] for row in rows if k in row.pass_at]
        if values:
            pass_at[k], covered[k] = sum(values) / len(values), len(values)
    all_steps = [o.steps for items in by_task.values() for o in items if o.counted]
    overall = TaskMetrics(
        n=sum(row.n for row in rows),
        successes=sum(row.successes for row in rows),
        success_rate=_mean(rated),
        pass_at=pass_at,
        mean_steps=_mean(all_steps),
        errors=sum(row.errors for row in rows),
        unscored=sum(row.unscored for row in rows),
        tasks=len(rows),
    )
    return {
        "tasks": {task: row.to_dict() for task, row in per_task.items()},
        "overall": overall.to_dict(),
        "pass_at_tasks": {f"pass@{k}": count for k, count in covered.items()},
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
