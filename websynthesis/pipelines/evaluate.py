"""evaluate.py's job: an agent in a live environment in, success and pass@k out.

``eval=agent`` (default) runs every (task, seed, attempt) episode in ``env`` and writes, in
the run dir:

- ``episodes.jsonl``: one line per finished episode (task, seed, attempt, success, steps,
  error, reward, end, answer, actions, policy failures, and the look-ahead when WMLA is on);
- ``transitions.jsonl``: every real step, in the raw transition form (``imagined: false``);
- ``wmla.jsonl`` (WMLA on): every look-ahead step with its candidates' imagined pages;
- ``summary.json``: success rate and pass@k per task and overall, errors apart;
- ``model_stats.json``: the model roles' outcome counters of this run (not of resumed ones).

A rerun in the same run dir resumes: episodes already in ``episodes.jsonl`` without an error
are skipped, errored ones run again (the summary uses each episode's latest line). Episodes
run ``env.pool_size`` at a time, one browser each, sharing one batched model client.

``eval=world_model`` measures world-model fidelity on ``eval.transitions`` and writes
``fidelity.json`` (see :mod:`websynthesis.evaluation.fidelity`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from websynthesis import tracking
from websynthesis.backends.stack import build_stack
from websynthesis.data.episodes import latest_episodes
from websynthesis.data.records import JsonlLog
from websynthesis.data.tasks import Task, load_tasks
from websynthesis.evaluation.agent import Agent, AgentSettings, Episode, EpisodeSpec
from websynthesis.evaluation.baselines import baseline
from websynthesis.evaluation.fidelity import METRICS, evaluate_fidelity, load_transitions
from websynthesis.evaluation.metrics import Outcome, summarize
from websynthesis.evaluation.webarena_eval import RoleJudge
from websynthesis.evaluation.wmla import LookAheadPlanner, LookAheadSettings
from websynthesis.io import atomic_write_json
from websynthesis.roles.client import ModelClient
from websynthesis.web.action_sets import action_set

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured evaluation; returns the summary (or fidelity report) it wrote."""
    out = Path(cfg.paths.output_dir)
    loggers = tracking.instantiate_loggers(cfg.get("logger"))
    tracking.log_job_config(loggers, cfg)
    try:
        if cfg.eval.mode == "agent":
            result = asyncio.run(_evaluate_agent(cfg, out))
            metrics = {f"eval/{k}": v for k, v in result["overall"].items() if _number(v)}
        elif cfg.eval.mode == "world_model":
            result = asyncio.run(_evaluate_world_model(cfg, out))
            metrics = {
                f"fidelity/{who}/{metric}": result[who][metric]
                for who in ("model", "copy_baseline")
                for metric in METRICS
                if _number(result[who][metric])
            }
        else:
            raise ValueError(f"eval.mode must be agent or world_model, not {cfg.eval.mode!r}")
        for logger in loggers:
            logger.log_metrics(metrics)
            if cfg.eval.mode == "agent" and hasattr(logger, "log_table"):  # W&B
                logger.log_table("eval/tasks", *_table_rows(result))
    finally:
        tracking.finish(loggers)
    return result


# --- agent --------------------------------------------------------------------------------


def episode_specs(cfg: DictConfig, tasks: dict[str, Task | None]) -> list[EpisodeSpec]:
    """Every episode the config asks for, in task, seed, attempt order."""
    attempts = int(cfg.eval.attempts)
    if attempts < 1:
        raise ValueError(f"eval.attempts must be >= 1, not {attempts}")
    if cfg.eval.seeds:
        plan = [(int(seed), a) for seed in cfg.eval.seeds for a in range(attempts)]
    else:
        plan = [(int(cfg.eval.seed_offset) + a, a) for a in range(attempts)]
    site_urls = {site: url for site, url in (cfg.env.site_urls or {}).items() if url}
    actions = action_set(cfg.env.get("actions"))
    specs = []
    for name, task in tasks.items():
        sites = tuple(site_urls[s] for s in task.sites if s in site_urls) if task else ()
        specs += [EpisodeSpec(name, seed, a, task, sites, actions) for seed, a in plan]
    return specs


def _tasks(cfg: DictConfig) -> dict[str, Task | None]:
    """The env's task names, checked now (not after a browser started), with WebArena specs."""
    names = [str(name) for name in cfg.env.tasks]
    if not names:
        raise ValueError(f"env={cfg.env.name} names no tasks: set env.tasks=[...]")
    if cfg.env.name == "miniwob":
        from websynthesis.env import miniwob

        for name in names:
            miniwob.task_class(name)  # raises on an unknown task
        return dict.fromkeys(names)
    known = {task.task_id: task for task in load_tasks(cfg.taskset.path)}
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"tasks {missing} are not in taskset.path={cfg.taskset.path}")
    return {name: known[name] for name in names}


def model_client(cfg: DictConfig) -> ModelClient:
    """The model client, the policy's temperature overridden by ``eval.temperature``.

    Batched under ``model.batching`` (concurrent episodes share waves) but never cached,
    whatever ``model.cache``
    says: the response cache knows an adapter by its path, so an adapter retrained in place
    would be scored on its predecessor's answers.
    """
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.eval.temperature is not None:
        model.roles.policy.temperature = float(cfg.eval.temperature)
    return ModelClient.from_config(model, backend=build_stack(model).backend)


async def _evaluate_agent(cfg: DictConfig, out: Path) -> dict[str, Any]:
    tasks = _tasks(cfg)
    specs = episode_specs(cfg, tasks)
    episodes_path = out / "episodes.jsonl"
    done = {key for key, rec in latest_episodes(episodes_path).items() if rec.get("error") is None}
    pending = [spec for spec in specs if spec.key not in done]
    log.info("%d episodes, %d already done, %d to run", len(specs), len(done), len(pending))
    if pending:
        await _run_episodes(cfg, out, pending, [t for t in tasks.values() if t is not None])
    latest = latest_episodes(episodes_path)
    wanted = {spec.key for spec in specs}
    records = [rec for key, rec in latest.items() if key in wanted]
    ks = list(cfg.eval.k or range(1, len(specs) // len(tasks) + 1))
    summary = summarize([Outcome.from_record(rec) for rec in records], ks)
    failures: Counter[str] = Counter()
    for rec in records:
        failures.update(rec.get("policy_failures") or {})
    summary.update(
        episodes=len(records),
        policy_failures=dict(sorted(failures.items())),
        wmla=OmegaConf.to_container(cfg.eval.wmla) if cfg.eval.wmla.enabled else None,
    )
    atomic_write_json(out / "summary.json", summary)
    _print_summary(summary)
    return summary


async def _run_episodes(
    cfg: DictConfig, out: Path, pending: list[EpisodeSpec], tasks: Sequence[Task]
) -> None:
    from websynthesis.env.browsergym_env import make_env
    from websynthesis.env.pool import EnvPool

    client = model_client(cfg)
    wmla = cfg.eval.wmla
    planner = None
    if wmla.enabled:
        look = LookAheadSettings(wmla.candidates, wmla.depth, wmla.temperature, wmla.from_step)
        planner = LookAheadPlanner(client, look)
    agent = Agent(
        client,
        AgentSettings(
            max_steps=int(cfg.eval.max_steps),
            max_failures=int(cfg.eval.max_failures),
            baseline=baseline(str(cfg.eval.get("policy", "model"))),
            draw=int(cfg.eval.get("draw", 0)),
        ),
        planner=planner,
        transitions=JsonlLog(out / "transitions.jsonl"),
        lookahead_log=JsonlLog(out / "wmla.jsonl") if planner is not None else None,
        judge=RoleJudge(client),
    )
    episodes = JsonlLog(out / "episodes.jsonl")
    env_config = OmegaConf.to_object(cfg.env)
    queue: asyncio.Queue[EpisodeSpec] = asyncio.Queue()
    for spec in pending:
        queue.put_nowait(spec)
    size = max(1, min(int(cfg.env.pool_size), len(pending)))
    pool = EnvPool(lambda: make_env(env_config, tasks), size)

    async def worker() -> None:
        with pool.lease() as env:  # one env per worker: never waits
            while not queue.empty():
                episode = await agent.run(env, queue.get_nowait())
                episodes.append(episode.to_record())
                _report(episode)

    try:
        await asyncio.gather(*(worker() for _ in range(size)))
    finally:
        await asyncio.to_thread(pool.close)
        client.close()
    atomic_write_json(out / "model_stats.json", client.stats.to_dict())
    client.stats.require_answers()


def _report(episode: Episode) -> None:
    spec = episode.spec
    outcome = "ERROR" if episode.error else ("success" if episode.success else "failure")
    log.info(
        "%s seed %d attempt %d: %s after %d steps (%s)%s",
        spec.task_name,
        spec.seed,
        spec.attempt,
        outcome,
        episode.steps,
        episode.end,
        f": {episode.error}" if episode.error else "",
    )


def _table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The summary table: one row per task and an overall row; the pass@k columns there are."""
    overall = summary["overall"]
    shown = [key for key in overall if key.startswith("pass@")]
    columns = ["task", "n", "success", *shown, "steps", "errors"]
    rows = [
        [name, row["n"], row["success_rate"], *(row.get(key) for key in shown),
         row["mean_steps"], row["errors"]]
        for name, row in [*summary["tasks"].items(), ("overall", overall)]
    ]  # fmt: skip
    return columns, rows


def _print_summary(summary: dict[str, Any]) -> None:
    overall = summary["overall"]
    title = f"{overall['tasks']} tasks, {summary['episodes']} episodes, {overall['errors']} errors"
    table = Table(title=title)
    columns, rows = _table_rows(summary)
    for column in columns:
        table.add_column(column, justify="left" if column == "task" else "right")
    for name, *cells in rows:
        table.add_row(escape(name), *(_cell(cell) for cell in cells))
    Console().print(table)


# --- world model --------------------------------------------------------------------------


async def _evaluate_world_model(cfg: DictConfig, out: Path) -> dict[str, Any]:
    path = cfg.eval.transitions
    if not path:
        raise ValueError("eval=world_model needs eval.transitions=PATH (a transitions.jsonl)")
    transitions, imagined = load_transitions(path, cfg.eval.limit)
    if not transitions:
        raise ValueError(f"{path} holds no real transitions ({imagined} imagined ones skipped)")
    client = model_client(cfg)
    try:
        report = await evaluate_fidelity(client, transitions, int(cfg.eval.batch))
    finally:
        client.close()
    report = {"transitions_file": str(path), "imagined_skipped": imagined, **report}
    atomic_write_json(out / "fidelity.json", report)
    table = Table(title=f"World-model fidelity on {len(transitions)} real transitions")
    for column in ("metric", "world model", "copy baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric in METRICS:
        table.add_row(
            metric, _cell(report["model"][metric]), _cell(report["copy_baseline"][metric])
        )
    Console().print(table)
    return report


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
