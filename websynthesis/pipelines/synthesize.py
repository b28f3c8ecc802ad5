"""synthesize.py's job: tasks in; searched trees, training trajectories and statistics out.

The trees are searched on one of two worlds (``cfg.world``, ``conf/world/``):

- ``world=model`` (default, the paper's setting): :class:`ModelWorld`, the world model
  imagining every page from the first page of each task in ``taskset.path``; the reward model
  scores each step; the transitions written are ``imagined``.
- ``world=browser``: :class:`~websynthesis.synthesis.browser_world.LiveBrowserWorld`, live
  MiniWoB++ pages in ``env.pool_size`` browsers, made reversible by reset and replay. One
  tree per instance, a task of ``env.tasks`` under a seed of ``world.seeds`` (task id
  ``click-test@3``): a MiniWoB++ task is another page and instruction under each seed. The
  objective is the environment's instruction for that seed, known after reset; the
  environment's reward scores each step, so the reward model is never asked; the
  transitions written are real. As no task file holds that objective, each tree's line of
  ``trees.jsonl`` keeps it (``goal``). The browsers are stopped when the run ends, however
  it ends.

1. Open the run dir (:class:`~websynthesis.synthesis.store.RunStore`): repair it after a
   kill, and skip the tasks it already records.
2. Build the model stack from ``cfg.model``: the backend (Hydra ``_target_``), under a
   response cache (``model.cache``, in ``paths.cache_dir``), under a wave batcher
   (``model.batching``); a :class:`ModelClient` with a :class:`UsageTracker` (``prices``).
3. List this shard's tasks (``taskset.path`` and ``taskset.limit``, or the browser instances;
   then ``shard``/``num_shards``; checked before any model or browser starts) and start
   each from its first page, and its goal from the world (:meth:`WebWorld.goal`). For
   ``world=model``, tasks without a first page are counted first: an error naming the
   capture command, or with ``skip_without_state`` left out (counted, never recorded as
   done). A record whose ``task_key`` (the task's content) differs from the task's now, or
   that an older run recorded as skipped, is retired and the task searched again.
4. Search them ``search.concurrent_trees`` at a time (:class:`SearchEngine`) with the
   world and :class:`WebSearchPolicy`. As each tree finishes, extract its examples and
   append tree + examples to the run dir, then refresh ``stats.json``.
5. Report: a progress bar while it runs; a summary table, metrics and a table of sample
   trajectories to the configured loggers at the end.

A tree stopped by the run's token or cost budget before its first iteration is not
recorded: a rerun with a larger budget searches it. A tree whose search raised (a bug), or
whose browser could not start it (``EnvError``: the environment's failure, not the task's),
is not recorded either; the error goes to ``stats.json`` and the job exits with an error once
the other trees are done, so a rerun tries them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from websynthesis.backends.stack import BackendStack, build_stack
from websynthesis.backends.types import Backend
from websynthesis.backends.usage import UsageTracker
from websynthesis.data.tasks import Task, instances, load_tasks, shard_tasks, task_key
from websynthesis.env.base import EnvError
from websynthesis.roles.client import ModelClient
from websynthesis.search import SearchEngine, SearchResult, StopReason, TreeTask
from websynthesis.synthesis import (
    TRAJECTORY_KINDS,
    BrowserWorld,
    Extractor,
    Goal,
    ModelWorld,
    ProgressDisplay,
    RunStore,
    Unsearchable,
    WebSearchPolicy,
    engine_settings,
    merge_counts,
    previous_stats,
    run_stats,
    search_settings,
    task_summary,
    tree_record,
)
from websynthesis.synthesis.state import WebState, encode_action

if TYPE_CHECKING:
    from websynthesis.synthesis.browser_world import LiveBrowserWorld

    SearchWorld = ModelWorld | LiveBrowserWorld

log = logging.getLogger(__name__)
WORLDS = ("model", "browser")


def build_backend(cfg: DictConfig, backend: Backend | None = None) -> BackendStack:
    """The job's backend stack (:func:`~websynthesis.backends.stack.build_stack`): cached
    under ``model.cache``, batched under ``model.batching``."""
    cache_dir = cfg.paths.cache_dir if cfg.model.cache else None
    return build_stack(cfg.model, backend=backend, cache_dir=cache_dir)


def select_tasks(cfg: DictConfig) -> list[Task]:
    """This job's shard of the tasks to search: ``taskset.path`` (``taskset.limit`` of them) for
    ``world=model``, every (``env.tasks``, ``world.seeds``) instance for ``world=browser``."""
    if cfg.world.name not in WORLDS:
        raise ValueError(f"unknown world {cfg.world.name!r}: expected one of {WORLDS}")
    if cfg.world.name == "browser":
        tasks = browser_tasks(cfg)
    else:
        tasks = load_tasks(cfg.taskset.path)
        if cfg.taskset.limit is not None:
            tasks = tasks[: cfg.taskset.limit]
    return shard_tasks(tasks, cfg.shard, cfg.num_shards)


CAPTURE = "python -m websynthesis.env.capture"


class NoFirstPages(ValueError):
    """``world=model`` was given tasks without a first page (``state``) to imagine from."""


def check_first_pages(cfg: DictConfig, tasks: list[Task]) -> None:
    """``world=model`` imagines every page from the task's first one: tasks without ``state``
    are counted before anything starts. None with one is an error naming the capture
    command; some without one are an error too unless ``skip_without_state`` (then they are
    left out, counted in ``stats.json``, and searched by a later run once they have one)."""
    if cfg.world.name != "model":
        return
    missing = [task.task_id for task in tasks if not task.state]
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    capture = (
        f"capture them in the real browser with `{CAPTURE} taskset.path={cfg.taskset.path} "
        "env=webarena env.site_urls.<site>=<url> out=<file>` (WebArena's own configs have none)"
    )
    if len(missing) == len(tasks):
        raise NoFirstPages(
            f"none of the {len(tasks)} tasks of taskset.path={cfg.taskset.path} has a first page "
            f"(state), which world=model imagines from: {capture}"
        )
    if not cfg.skip_without_state:
        raise NoFirstPages(
            f"{len(missing)} of {len(tasks)} tasks have no first page (state): {shown}. "
            f"{capture[0].upper()}{capture[1:]}, or set skip_without_state=true to search the "
            f"{len(tasks) - len(missing)} that have one"
        )
    log.warning(
        "%d of %d tasks have no first page and are skipped: %s", len(missing), len(tasks), shown
    )


def stale_records(records: list[dict[str, Any]], keys: dict[str, str]) -> set[str]:
    """The recorded tasks of this shard that must be searched again: recorded as skipped by
    an older run, or recorded for another version of the task (its ``task_key``)."""
    stale = set()
    for record in records:
        task_id = record["task_id"]
        if task_id not in keys:
            continue
        recorded = record.get("task_key")
        if record.get("skipped") or (recorded is not None and recorded != keys[task_id]):
            stale.add(task_id)
    return stale


def browser_tasks(cfg: DictConfig) -> list[Task]:
    """The instances ``world=browser`` searches, checked before any browser or model starts."""
    from websynthesis.env import miniwob  # BrowserGym: imported only to browse

    if cfg.env.name != "miniwob":
        raise ValueError(
            f"world=browser searches MiniWoB++ tasks (env=miniwob), not env={cfg.env.name}"
        )
    names = list(dict.fromkeys(str(name) for name in cfg.env.tasks))
    seeds = list(dict.fromkeys(int(seed) for seed in cfg.world.seeds))
    if not names or not seeds:
        raise ValueError("world=browser needs env.tasks=[...] and world.seeds=[...]")
    for name in names:
        miniwob.task_class(name)  # raises on an unknown task
    return instances(names, seeds)


def build_world(cfg: DictConfig, client: ModelClient) -> SearchWorld:
    """The world of ``cfg.world``: the world model, or ``env.pool_size`` live browsers (which
    start on their first reset)."""
    if cfg.world.name == "browser":
        from websynthesis.synthesis.browser_world import LiveBrowserWorld

        return LiveBrowserWorld.from_config(OmegaConf.to_object(cfg.env))
    return ModelWorld(client, accept_malformed=cfg.world.accept_malformed_pages)


def run(cfg: DictConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Synthesize this shard into ``paths.output_dir``; returns the final ``stats.json``.

    ``backend`` replaces ``cfg.model.backend`` (benchmarks, tests); it is closed at the end.
    """
    store = RunStore(cfg.paths.output_dir)
    try:
        return asyncio.run(Synthesis(cfg, store, backend).run())
    finally:
        store.close()


def _loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers, sent the job's config; none without importing Lightning.

    (``websynthesis.tracking`` imports pytorch_lightning, seconds of start-up a run with
    ``logger=none`` does not need.)
    """
    if not cfg.get("logger"):
        return []
    from websynthesis import tracking

    loggers = tracking.instantiate_loggers(cfg.logger)
    tracking.log_job_config(loggers, cfg)
    return loggers


class Synthesis:
    """One session of a synthesis run (see the module docstring)."""

    def __init__(self, cfg: DictConfig, store: RunStore, backend: Backend | None) -> None:
        self.cfg = cfg
        self.tasks = select_tasks(cfg)  # a bad task file fails before any model is loaded
        check_first_pages(cfg, self.tasks)  # and so does one whose tasks have no first page
        self.keys = {task.task_id: task_key(task) for task in self.tasks}
        self.goals: dict[str, Goal] = {}  # the world's, once a task is started
        self.store = store
        self.records = store.supersede(stale_records(store.open(), self.keys))
        self.skipped: dict[str, str] = {}  # this session's unsearchable tasks, never "done"
        previous = previous_stats(store)
        self.previous = previous["counters"]
        self.sessions: list[dict[str, Any]] = previous["sessions"]
        self.errors: list[dict[str, str]] = []
        self.unstarted = 0
        self.started = time.monotonic()
        self.usage = UsageTracker(cfg.prices)
        self.stack = build_backend(cfg, backend)
        self.client = ModelClient.from_config(
            cfg.model, backend=self.stack.backend, usage=self.usage
        )
        self.world = build_world(cfg, self.client)
        self.policy = WebSearchPolicy(self.client)
        self.extractor = Extractor(
            self.client, imagined=self.world.imagined, rollback_per_step=cfg.rollback_per_step
        )
        self.session = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "resumed_with": len(self.records),
        }

    async def run(self) -> dict[str, Any]:
        try:
            loggers = _loggers(self.cfg)
            roots = await self._roots()
            display = ProgressDisplay(
                len(self.tasks), len(self.records), self._usage_now, enabled=self.cfg.progress
            )
            engine: SearchEngine[WebState, Any] = SearchEngine(
                self.world,
                self.policy,
                search_settings(self.cfg.search, self.policy.scale, int(self.cfg.seed)),
                engine_settings(self.cfg.search, self.cfg.model.batching),
                budget_exhausted=self._budget_exhausted,
                on_tree_done=self._tree_done,
                on_progress=display.update,
            )
            with display:
                await engine.arun(roots)
        finally:
            try:
                self.client.close()
            finally:
                self.world.close()  # the browsers, on success and on error alike
        stats = self._write_stats()
        self._report(stats, loggers)
        if self.unstarted:
            log.warning(
                "%d tasks were not searched: the run's budget is spent; rerun on this run dir "
                "with a larger budget to continue",
                self.unstarted,
            )
        self.client.stats.require_answers()
        if self.errors:
            failed = ", ".join(error["task_id"] for error in self.errors)
            raise RuntimeError(
                f"the search of {len(self.errors)} tasks failed ({failed}); "
                f"tracebacks in {self.store.stats}"
            )
        return stats

    async def _roots(self) -> list[TreeTask[WebState]]:
        """First states of the tasks still to do (started together: browsers reset in
        parallel), in task order. A task without one is recorded as skipped; one whose browser
        failed is an error, not recorded."""
        done = {record["task_id"] for record in self.records}
        todo = [task for task in self.tasks if task.task_id not in done]
        starts = await asyncio.gather(
            *(self.world.reset(task) for task in todo), return_exceptions=True
        )
        roots = []
        for task, start in zip(todo, starts, strict=True):
            if isinstance(start, Unsearchable):
                log.warning("task %s not searched: %s", task.task_id, start)
                self.skipped[task.task_id] = str(start)
                continue
            if isinstance(start, EnvError):
                log.error("the browser could not start task %s: %s", task.task_id, start)
                self.errors.append({"task_id": task.task_id, "error": f"reset: {start}"[-4000:]})
                continue
            if isinstance(start, BaseException):
                raise start
            self.goals[task.task_id] = self.world.goal(task)
            roots.append(TreeTask(task.task_id, start, self.goals[task.task_id]))
        shard = f"{self.cfg.shard}/{self.cfg.num_shards}"
        log.info(
            "%d tasks in shard %s: %d done before, %d to search",
            *(len(self.tasks), shard, len(done), len(roots)),
        )
        return roots

    async def _tree_done(self, task_id: str, result: SearchResult[WebState, Any]) -> None:
        if result.error is not None:
            log.error("the search of task %s failed:\n%s", task_id, result.error)
            self.errors.append({"task_id": task_id, "error": result.error[-4000:]})
            return
        if result.stop_reason is StopReason.BUDGET and result.iterations == 0:
            self.unstarted += 1
            return
        goal = self.goals[task_id]
        extracted = await self.extractor.extract(result, goal)
        tree = result.to_dict(lambda state: state.to_json(), encode_action)
        summary = task_summary(result, extracted)
        # A live site's objective (MiniWoB's instruction for the seed) is in no task file:
        # the record keeps it, for readers of the tree. A task file's is left there.
        kept = goal if isinstance(self.world, BrowserWorld) else None
        self._record(task_id, tree, summary, examples=extracted.rows(), goal=kept)
        self._write_stats()

    def _record(
        self,
        task_id: str,
        tree: dict[str, Any] | None,
        summary: dict[str, Any],
        *,
        examples: dict[str, list[dict[str, Any]]] | None = None,
        goal: Goal | None = None,
    ) -> None:
        record = tree_record(
            task_id, self.keys[task_id], summary, tree, examples=examples, goal=goal
        )
        self.store.append(record)
        self.records.append(record)

    def _counters(self) -> dict[str, Any]:
        """This session's counters added to the previous sessions'."""
        stack = self.stack
        session = {
            "usage": self.usage.to_dict(),
            "outcomes": self.client.stats.to_dict(),
            "cache": None if stack.cache is None else stack.cache.stats.to_dict(),
            "batching": None if stack.batcher is None else stack.batcher.stats.to_dict(),
            "transport": stack.transport(),
            "world": self.world.stats.to_dict(),
            "policy": self.policy.stats.to_dict(),
            "wall_time_s": round(time.monotonic() - self.started, 3),
        }
        merged: dict[str, Any] = merge_counts(self.previous, session)
        return merged

    def _write_stats(self) -> dict[str, Any]:
        session = self.session | {
            "wall_time_s": round(time.monotonic() - self.started, 3),
            "tasks_recorded": len(self.records) - self.session["resumed_with"],
        }
        stats = run_stats(
            self.records,
            len(self.tasks),
            self._counters(),
            [*self.sessions, session],
            self.errors,
            self.skipped,
        )
        self.store.write_stats(stats)
        return stats

    def _budget_exhausted(self) -> bool:
        budget = self.cfg.budget
        earlier = (self.previous.get("usage") or {}).get("total")
        return self.usage.exhausted(budget.tokens, budget.cost_usd, earlier=earlier)

    def _usage_now(self) -> tuple[int, int, float | None]:
        counts = self.usage.to_dict()["total"]
        return counts["calls"] + counts["cached_calls"], counts["total_tokens"], counts["cost_usd"]

    def _report(self, stats: dict[str, Any], loggers: list[Any]) -> None:
        tasks = stats["tasks"]
        title = f"{tasks['done']}/{tasks['total']} tasks, {tasks['solved']} solved"
        table = Table(title=f"{title}, {stats['nodes']} nodes")
        for column in ("task", "stop", "nodes", "solved", *TRAJECTORY_KINDS):
            table.add_column(column, justify="left" if column in ("task", "stop") else "right")
        for task_id, summary in list(stats["per_task"].items())[:20]:
            counts = summary.get("examples") or {}
            table.add_row(
                escape(task_id),
                summary.get("stop_reason") or "-",
                str(summary.get("nodes", 0)),
                "yes" if summary.get("solved") else "no",
                *(str(counts.get(kind, 0)) for kind in TRAJECTORY_KINDS),
            )
        Console().print(table)
        metrics = {
            "synthesis/tasks_done": tasks["done"],
            "synthesis/tasks_solved": tasks["solved"],
            "synthesis/nodes": stats["nodes"],
            "synthesis/wall_time_s": stats["wall_time_s"],
            **{
                f"synthesis/examples/{kind}": stats["examples"].get(kind, 0)
                for kind in TRAJECTORY_KINDS
            },
            **{f"synthesis/calls/{role}": n for role, n in stats["calls"].items()},
            **{f"synthesis/tokens/{role}": t["total"] for role, t in stats["tokens"].items()},
        }
        if stats["cost_usd"] is not None:
            metrics["synthesis/cost_usd"] = stats["cost_usd"]
        columns, rows = self._sample_rows()
        for logger in loggers:
            logger.log_metrics(metrics)
            log_table = getattr(logger, "log_table", None)
            if log_table is not None and rows:
                log_table(key="synthesis/sample_trajectories", columns=columns, data=rows)
        if loggers:
            from websynthesis import tracking

            tracking.finish(loggers)

    def _sample_rows(self) -> tuple[list[str], list[list[Any]]]:
        """A few examples of each kind, for a glance at what the run produced."""
        columns = ["kind", "task_id", "depth", "reward", "action", "target"]
        rows: list[list[Any]] = []
        per_kind = max(1, self.cfg.sample_trajectories // len(TRAJECTORY_KINDS))
        for kind in TRAJECTORY_KINDS:
            shown = 0
            for record in self.records:
                for row in record["examples"][kind]:
                    if shown == per_kind:
                        break
                    meta = row["meta"]
                    target = row["messages"][-1]["content"][:500]
                    rows.append(
                        [
                            kind,
                            meta["task_id"],
                            meta["depth"],
                            meta["reward"],
                            meta["action"],
                            target,
                        ]
                    )
                    shown += 1
        return columns, rows
