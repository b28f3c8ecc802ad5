"""A live progress bar for synthesis: tasks done, nodes/s, calls, tokens, cost, ETA.

Fed by the engine's :class:`~websynthesis.search.Progress` reports (about once a second and
once per finished tree) and by the usage tracker. Tasks finished by an earlier session of a
resumed run count as done from the start, but not toward the speed the ETA is computed from.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from websynthesis.search import Progress as EngineProgress

UsageSnapshot = Callable[[], tuple[int, int, float | None]]
"""``(calls, tokens, cost in USD or None)`` so far."""


class ProgressDisplay:
    """A rich progress bar over ``total`` tasks, ``done`` of them finished before this session."""

    def __init__(self, total: int, done: int, usage: UsageSnapshot, enabled: bool = True) -> None:
        self._usage = usage
        self._done = done
        self._bar = Progress(
            TextColumn("[bold]synthesize"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[nodes_per_s]:.1f} nodes/s"),
            TextColumn("{task.fields[calls]} calls"),
            TextColumn("{task.fields[tokens]} tokens"),
            TextColumn("{task.fields[cost]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._bar.add_task(
            "synthesize", total=total, completed=done, nodes_per_s=0.0, calls=0, tokens=0, cost="$-"
        )

    def __enter__(self) -> ProgressDisplay:
        self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def update(self, progress: EngineProgress) -> None:
        calls, tokens, cost = self._usage()
        self._bar.update(
            self._task,
            completed=self._done + progress.trees_done,
            nodes_per_s=progress.nodes_per_s,
            calls=calls,
            tokens=tokens,
            cost="$-" if cost is None else f"${cost:.4f}",
        )
