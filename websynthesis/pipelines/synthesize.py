"""synthesize.py's job: tasks in, searched trees and trajectories out.

This build runs the stage every search starts with: load the configured
tasks, take this job's shard, parse each first page, and report what the
search will work on (``pages.json`` in the run dir, a table on the console,
the same numbers to the configured loggers). Tasks whose first page is
missing or structurally broken are listed, not searched.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from websynthesis import tracking
from websynthesis.data.tasks import Task, load_tasks, shard_tasks
from websynthesis.io import atomic_write_json
from websynthesis.web.observation import parse_axtree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageSummary:
    """What the search will see of one task's first page."""

    task_id: str
    chars: int
    nodes: int
    interactive: int
    errors: int
    searchable: bool


def select_tasks(cfg: DictConfig) -> list[Task]:
    """The configured tasks, limited, then this job's shard of them."""
    tasks = load_tasks(cfg.data.tasks)
    if cfg.data.limit is not None:
        tasks = tasks[: cfg.data.limit]
    return shard_tasks(tasks, cfg.shard, cfg.num_shards)


def summarize_page(task: Task) -> PageSummary:
    """Parse a task's first page; a page with structural errors is not searchable."""
    if not task.state:
        return PageSummary(task.task_id, 0, 0, 0, 0, searchable=False)
    tree = parse_axtree(task.state)
    return PageSummary(
        task_id=task.task_id,
        chars=len(task.state),
        nodes=len(tree.nodes),
        interactive=len(tree.interactive()),
        errors=len(tree.errors),
        searchable=not tree.errors and bool(tree.interactive()),
    )


def run(cfg: DictConfig) -> dict[str, int]:
    """Prepare this shard's tasks and write ``pages.json``; returns the counts."""
    out = Path(cfg.paths.output_dir)
    loggers = tracking.instantiate_loggers(cfg.get("logger"))
    tracking.log_job_config(loggers, cfg)
    pages = [summarize_page(task) for task in select_tasks(cfg)]
    atomic_write_json(out / "pages.json", [asdict(page) for page in pages])
    stats = {
        "tasks": len(pages),
        "searchable": sum(page.searchable for page in pages),
        "nodes": sum(page.nodes for page in pages),
        "structural_errors": sum(page.errors for page in pages),
    }
    _print_table(pages, stats)
    for logger in loggers:
        logger.log_metrics({f"pages/{key}": value for key, value in stats.items()})
    tracking.finish(loggers)
    log.info("wrote %s", out / "pages.json")
    return stats


def _print_table(pages: list[PageSummary], stats: dict[str, int]) -> None:
    table = Table(title=f"{stats['tasks']} tasks, {stats['searchable']} searchable")
    for column in ("task", "chars", "nodes", "interactive", "errors"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for page in pages[:20]:
        table.add_row(escape(page.task_id), *map(str, (page.chars, page.nodes, page.interactive,
                                                page.errors)))
    if len(pages) > 20:
        table.add_row(f"… {len(pages) - 20} more", "", "", "", "")
    Console().print(table)
