"""Many tree searches at once, so their model calls meet in the same batches.

The reference searched one task at a time, two requests at a time (E1, E2). The
engine keeps ``concurrent_trees`` trees in flight on one event loop, each with
up to ``in_flight_per_tree`` iterations. Every model call is a coroutine of the
problem; behind a :class:`~websynthesis.backends.batching.BatchingBackend`, the
calls that all trees issue in the same wave (every tree's proposals, then every
new child's world step, then every reward) become one backend batch.

Each tree waits only for its own calls: its next selection starts as soon as they are
answered. Whether a call waits for others is the backend stack's business: behind a backend
that decodes a batch to its end, the batcher sends a wave when the one before has returned
(the trees then move in waves, and are reproducible run to run); behind one that batches
continuously (``LocalBackend(continuous=True)``, a vLLM server) it streams, each request
answered as soon as it is done (``backends/batching.py``). The requests in flight are
bounded by ``concurrent_trees * in_flight_per_tree`` iterations.

``batch=False`` with ``concurrent_trees=1`` is one request at a time, as the
reference did (kept for comparisons and debugging).

Each finished tree goes to ``on_tree_done`` at once, so a caller can write it
atomically before the next finishes. A tree that raises is recorded as failed,
with its traceback and partial tree, and the others go on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic

from websynthesis.search.interfaces import A, S, SearchPolicy, World
from websynthesis.search.mcts import TreeSearch
from websynthesis.search.result import SearchResult, StopReason
from websynthesis.search.settings import SearchSettings

TreeDone = Callable[[str, SearchResult[Any, Any]], Awaitable[None] | None]


@dataclass(frozen=True)
class TreeTask(Generic[S]):
    """One tree to search: its id (names the tree and fixes its seed), first state and payload."""

    task_id: str
    root: S
    payload: Any = None


@dataclass(frozen=True)
class EngineSettings:
    """How trees run together (the algorithm's own knobs are in :class:`SearchSettings`).

    Args:
        concurrent_trees: trees searched at once.
        in_flight_per_tree: iterations of one tree running at once (virtual loss
            spreads them); 1 keeps a deterministic problem's tree reproducible.
        batch: issue an expansion's calls together; ``False`` awaits them one by one.
        progress_interval_s: seconds between ``on_progress`` reports (plus one per tree done).
    """

    concurrent_trees: int = 32
    in_flight_per_tree: int = 1
    batch: bool = True
    progress_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrent_trees < 1 or self.in_flight_per_tree < 1:
            raise ValueError("concurrent_trees and in_flight_per_tree must be >= 1")


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress bars: nodes count the running trees' nodes too."""

    trees_done: int
    trees_total: int
    trees_failed: int
    nodes: int
    expansions: int
    elapsed_s: float

    @property
    def nodes_per_s(self) -> float:
        return self.nodes / self.elapsed_s if self.elapsed_s > 0 else 0.0


class SearchEngine(Generic[S, A]):
    """Searches a list of tasks with one world and one policy.

    Args:
        world, policy: the problem, shared by all trees (per-task data travels
            in ``TreeTask.payload`` and the states).
        search: the algorithm's parameters, the same for every tree.
        engine: concurrency.
        budget_exhausted: a global budget (tokens, cost) every tree checks before
            each iteration; once ``True``, trees stop with reason ``budget``.
        on_tree_done: called with ``(task_id, result)`` as each tree finishes
            (may be a coroutine function). Its exceptions are not contained: a
            result that cannot be saved stops the run.
        on_progress: called with a :class:`Progress` now and then.
    """

    def __init__(
        self,
        world: World[S, A],
        policy: SearchPolicy[S, A],
        search: SearchSettings | None = None,
        engine: EngineSettings | None = None,
        *,
        budget_exhausted: Callable[[], bool] | None = None,
        on_tree_done: TreeDone | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.world = world
        self.policy = policy
        self.search = search or SearchSettings()
        self.engine = engine or EngineSettings()
        self._budget_exhausted = budget_exhausted
        self._on_tree_done = on_tree_done
        self._on_progress = on_progress
        self._clock = clock
        self._active: set[TreeSearch[S, A]] = set()
        self._done = self._failed = self._done_nodes = self._done_expansions = 0
        self._total = 0
        self._start = 0.0

    def run(self, tasks: Iterable[TreeTask[S]]) -> list[SearchResult[S, A]]:
        """Synchronous :meth:`arun`."""
        return asyncio.run(self.arun(tasks))

    async def arun(self, tasks: Iterable[TreeTask[S]]) -> list[SearchResult[S, A]]:
        """Search every task; results come back in the order of ``tasks``."""
        queue = list(enumerate(tasks))
        results: list[SearchResult[S, A] | None] = [None] * len(queue)
        self._total, self._start = len(queue), self._clock()
        self._done = self._failed = self._done_nodes = self._done_expansions = 0
        pending = iter(queue)

        async def worker() -> None:
            for index, task in pending:
                result = await self._search(task)
                results[index] = result
                self._finished(result)
                if self._on_tree_done is not None:
                    outcome = self._on_tree_done(task.task_id, result)
                    if inspect.isawaitable(outcome):
                        await outcome
                self._report()

        reporter = asyncio.create_task(self._report_every()) if self._on_progress else None
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.engine.concurrent_trees, len(queue))):
                    group.create_task(worker())
        finally:
            if reporter is not None:
                reporter.cancel()
        return [result for result in results if result is not None]

    def progress(self) -> Progress:
        active = list(self._active)
        return Progress(
            trees_done=self._done,
            trees_total=self._total,
            trees_failed=self._failed,
            nodes=self._done_nodes + sum(tree.stats.nodes for tree in active),
            expansions=self._done_expansions + sum(tree.stats.expansions for tree in active),
            elapsed_s=self._clock() - self._start,
        )

    async def _search(self, task: TreeTask[S]) -> SearchResult[S, A]:
        tree = TreeSearch(
            self.world,
            self.policy,
            task.root,
            self.search,
            task_id=task.task_id,
            payload=task.payload,
            budget_exhausted=self._budget_exhausted,
            clock=self._clock,
        )
        self._active.add(tree)
        try:
            return await tree.run(self.engine.in_flight_per_tree, self.engine.batch)
        except Exception:
            return tree.result(StopReason.ERROR, error=traceback.format_exc())
        finally:
            self._active.discard(tree)

    def _finished(self, result: SearchResult[S, A]) -> None:
        self._done += 1
        self._failed += result.error is not None
        self._done_nodes += result.stats.nodes
        self._done_expansions += result.stats.expansions

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.progress())

    async def _report_every(self) -> None:
        while True:
            await asyncio.sleep(self.engine.progress_interval_s)
            self._report()
