"""The co-evolution driver: WebEvolver's self-improvement rounds over a live environment.

Round 0 starts the agent: it measures the untrained policy on the held-out seeds
(``baseline``; its real steps are also the world model's held-out transitions), searches the
training instances with MCTS on the live site (``search``: synthesize.py ``world=browser``, the
environment's reward), and trains on what the search found. Each later round ``r`` then:

1. ``sample``: runs the current policy on the training instances (evaluate.py on
   ``train_seeds``), recording every real step;
2. keeps the accepted episodes (the environment's reward; WebArena's evaluators);
3. ``policy``: fine-tunes the policy on every accepted trajectory so far (MCTS-found ones
   included) plus the imagined ones accepted in earlier rounds;
4. ``world_model``: fine-tunes the world model on every real transition so far (both
   trainings start from scratch, or, for the models in ``warm_start.models``, continue the
   previous round's adapter with ``warm_start.<model>``'s overrides: a shorter schedule);
5. ``imagine``: plays the queries the agent failed in this round again with the new world
   model as the web server (:mod:`websynthesis.evolution.imagine`, at most 7 steps), keeps
   what the judge accepts for the next round's policy data;
6. ``fidelity`` and ``evaluate``: the world model against the copy baseline on the held-out
   transitions, and the new policy's success on the held-out seeds.

Round 0 runs steps 3, 4 and 6 on the search's data. Where the site cannot be searched
(``mcts=false``: a site without reset and replay), round 0 is the baseline alone and round 1
samples the base policy. Every stage is a real job of the project
(the same pipelines as train.py, synthesize.py and evaluate.py, composed from their configs
with the stage's overrides) writing in its own folder, ``<run dir>/round_<r>/<stage>/``;
``state.json`` records each finished stage (atomically), so a killed run started again on
the same run dir skips what is done and reruns the stage it was in, which resumes from its
own files (synthesis trees, training checkpoints, episodes). ``metrics.json`` holds every
round's success, fidelity and data counts, which also go to the configured loggers.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from websynthesis import tracking
from websynthesis.data.chat import ChatExample, read_chat_jsonl, write_chat_jsonl
from websynthesis.data.episodes import episode_examples, read_episodes
from websynthesis.data.transitions import action_set_field, failer
from websynthesis.io import atomic_write_json
from websynthesis.pipelines.stages import StagedRun, check_split, read_json
from websynthesis.web.observation import parse_axtree

log = logging.getLogger(__name__)

ROUND_ZERO = ("baseline", "search", "policy", "world_model", "fidelity", "evaluate")
LATER_ROUNDS = ("sample", "policy", "world_model", "imagine", "fidelity", "evaluate")
# What another run can hand over (``reuse``): the stages that depend on no adapter of this
# run, so the same job elsewhere gave the same kind of output.
REUSABLE = ("round_0/baseline", "round_0/search")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) every round; returns ``metrics.json``'s content."""
    return CoEvolution(cfg).run()


class CoEvolution:
    """One co-evolution run dir (see the module docstring)."""

    def __init__(self, cfg: DictConfig) -> None:
        check_split(cfg)
        unknown = set(cfg.warm_start.models) - {"policy", "world_model"}
        if unknown:
            raise ValueError(f"warm_start.models: {sorted(unknown)} (policy, world_model only)")
        self.reuse = {str(name): Path(path) for name, path in (cfg.get("reuse") or {}).items()}
        unknown = set(self.reuse) - set(REUSABLE)
        if unknown:
            raise ValueError(f"reuse: {sorted(unknown)} (only {', '.join(REUSABLE)})")
        for name, path in self.reuse.items():
            if not path.is_dir():
                raise ValueError(f"reuse.{name}: {path} is not a directory")
        self.cfg = cfg
        self.out = Path(cfg.paths.output_dir)
        self.stages = StagedRun(self.out, cfg.overrides.common, int(cfg.seed), prefix="coevolve")
        self.metrics_path = self.out / "metrics.json"
        self.metrics: dict[str, Any] = read_json(self.metrics_path, {"rounds": {}})

    def run(self) -> dict[str, Any]:
        loggers = tracking.instantiate_loggers(self.cfg.get("logger"))
        tracking.log_job_config(loggers, self.cfg)
        try:
            for round_index in range(int(self.cfg.rounds) + 1):
                stages = ROUND_ZERO if round_index == 0 else LATER_ROUNDS
                for stage in stages:
                    self._stage(round_index, stage)
                row = self._round_metrics(round_index)
                for logger in loggers:
                    logger.log_metrics(_flat(row), step=round_index)
        finally:
            tracking.finish(loggers)
        return self.metrics

    # --- bookkeeping ---------------------------------------------------------------------

    def dir(self, round_index: int, stage: str) -> Path:
        return self.out / f"round_{round_index}" / stage

    def _stage(self, round_index: int, stage: str) -> None:
        if stage == "baseline" and not self.cfg.baseline:
            return
        if round_index == 0 and stage != "baseline" and not self.cfg.mcts:
            return  # no live search to start from: round 1 samples the base policy
        name = f"round_{round_index}/{stage}"
        if name in self.reuse:
            self.stages.stage(name, lambda out: _copy_stage(self.reuse[name], out))
            return
        run = getattr(self, f"_{stage}")
        self.stages.stage(name, lambda out: run(round_index, out))

    def _job(self, config_name: str, out: Path, overrides: list[str]) -> DictConfig:
        """A stage's job config: ``config_name``'s composition with the run's and the
        stage's overrides, writing into ``out``."""
        return self.stages.job(config_name, out, overrides)

    def _adapter(self, round_index: int, stage: str) -> str | None:
        """The newest adapter trained for ``stage`` (policy or world_model) in this round or
        before: a round whose data was empty skipped its training and keeps the last one."""
        for earlier in range(round_index, -1, -1):
            path = self.dir(earlier, stage) / "adapter"
            if path.is_dir():
                return str(path)
        return None

    def _warm_start(self, round_index: int, stage: str) -> list[str]:
        """A later round's training job continues the last round's adapter when ``stage`` is
        warm-started (with its own overrides); none trained yet: it starts from scratch."""
        warm = self.cfg.warm_start
        previous = self._adapter(round_index - 1, stage) if round_index else None
        if stage not in warm.models or previous is None:
            return []
        return [f"init_adapter={previous}", *warm[stage]]

    def _model_overrides(self, round_index: int) -> list[str]:
        """The policy and world-model adapters trained in round ``round_index``."""
        policy = self._adapter(round_index, "policy")
        world = self._adapter(round_index, "world_model")
        return [
            f"model.adapters.policy={_value(policy)}",
            f"model.adapters.world_model={_value(world)}",
        ]

    def _env(self) -> list[str]:
        tasks = ",".join(str(task) for task in self.cfg.tasks)
        return [f"env={self.cfg.environment}", f"env.tasks=[{tasks}]", *self.cfg.overrides.env]

    # --- stages ----------------------------------------------------------------------------

    def _evaluate_job(
        self, out: Path, seeds: list[int], models: list[str], extra: list[str]
    ) -> None:
        from websynthesis.pipelines import evaluate

        listed = ",".join(str(seed) for seed in seeds)
        overrides = [*self._env(), *models, f"eval.seeds=[{listed}]", *extra]
        evaluate.run(self._job("evaluate", out, overrides))

    def _baseline(self, round_index: int, out: Path) -> None:
        models = ["model.adapters.policy=null", "model.adapters.world_model=null"]
        self._evaluate_job(
            out, list(self.cfg.eval_seeds), models, list(self.cfg.overrides.evaluate)
        )

    def _search(self, round_index: int, out: Path) -> None:
        from websynthesis.pipelines import synthesize

        listed = ",".join(str(seed) for seed in self.cfg.train_seeds)
        overrides = [
            *self._env(),
            "world=browser",
            f"world.seeds=[{listed}]",
            *self.cfg.overrides.search,
        ]
        synthesize.run(self._job("synthesize", out, overrides))

    def _sample(self, round_index: int, out: Path) -> None:
        models = self._model_overrides(round_index - 1)
        self._evaluate_job(out, list(self.cfg.train_seeds), models, list(self.cfg.overrides.sample))

    def _policy(self, round_index: int, out: Path) -> None:
        from websynthesis.pipelines import train

        data = out.parent / "data"
        counts = self._policy_data(round_index, data / "policy.jsonl")
        atomic_write_json(data / "policy_stats.json", counts)
        if not counts["examples"]:
            # Nothing was accepted yet (a search that found no success, say): training on
            # nothing is no step, so the round keeps the last policy and says why.
            kept = self._adapter(round_index - 1, "policy") if round_index else None
            reason = {"skipped": "no accepted trajectories", "kept_adapter": kept}
            log.warning("co-evolution: round %d trains no policy: %s", round_index, reason)
            atomic_write_json(out / "skipped.json", reason)
            return
        overrides = [
            f"+data.train_files.trajectories={data / 'policy.jsonl'}",
            *self.cfg.overrides.policy,
            *self._warm_start(round_index, "policy"),
        ]
        train.run(self._job("train", out, overrides))

    def _world_model(self, round_index: int, out: Path) -> None:
        from websynthesis.pipelines import train

        files = ",".join(str(path) for path in self._real_transitions(round_index))
        overrides = [
            f"data.transitions=[{files}]",
            *self.cfg.overrides.world_model,
            *self._warm_start(round_index, "world_model"),
        ]
        train.run(self._job("train", out, overrides))

    def _imagine(self, round_index: int, out: Path) -> None:
        from websynthesis.evolution.imagine import ImagineSettings, imagine
        from websynthesis.pipelines.evaluate import model_client

        queries = self._failed_queries(self.dir(round_index, "sample"))
        settings = self.cfg.imagine
        examples: list[ChatExample] = []
        stats: dict[str, Any] = {"queries": len(queries), "enabled": bool(settings.enabled)}
        if settings.enabled and queries:
            job = self._job("evaluate", out, [*self._env(), *self._model_overrides(round_index)])
            client = model_client(job)
            try:
                config = ImagineSettings(
                    max_steps=int(settings.max_steps),
                    threshold=float(settings.threshold),
                    seed=int(self.cfg.seed) + round_index,
                )
                examples, imagined = asyncio.run(imagine(client, queries, config))
            finally:
                client.close()
            stats |= imagined.to_dict()
        stats["examples"] = write_chat_jsonl(out / "examples.jsonl", examples)
        atomic_write_json(out / "stats.json", stats)

    def _fidelity(self, round_index: int, out: Path) -> None:
        held_out = self.dir(0, "baseline") / "transitions.jsonl"
        if not held_out.is_file() or self._adapter(round_index, "world_model") is None:
            atomic_write_json(out / "fidelity.json", {"skipped": "no held-out transitions"})
            return
        from websynthesis.pipelines import evaluate

        overrides = [
            *self._env(),
            *self._model_overrides(round_index),
            "eval=world_model",
            f"eval.transitions={held_out}",
            *self.cfg.overrides.fidelity,
        ]
        evaluate.run(self._job("evaluate", out, overrides))

    def _evaluate(self, round_index: int, out: Path) -> None:
        models = self._model_overrides(round_index)
        self._evaluate_job(
            out, list(self.cfg.eval_seeds), models, list(self.cfg.overrides.evaluate)
        )

    # --- data ----------------------------------------------------------------------------

    def _policy_data(self, round_index: int, path: Path) -> dict[str, Any]:
        """Every accepted trajectory so far (MCTS-found, live, earlier imagined), one file."""
        from websynthesis.roles.client import ModelClient

        job = self._job("evaluate", path.parent, self._env())
        role = ModelClient.from_config(job.model, backend=_NoBackend()).role("policy")
        counts: Counter[str] = Counter()
        examples: list[ChatExample] = []
        search = self.dir(0, "search") / "trajectories"
        for kind in self.cfg.search_trajectories if self.cfg.mcts else ():
            found = list(read_chat_jsonl(search / f"{kind}.jsonl"))
            counts[f"search/{kind}"] += len(found)
            examples += found
        for earlier in range(1, round_index + 1):
            live = Counter[str]()
            sample = self.dir(earlier, "sample")
            examples += episode_examples(
                read_episodes(sample), role, counts=live, source=str(sample)
            )
            counts.update({f"live/{key}": n for key, n in live.items()})
            if earlier < round_index:
                imagined = list(read_chat_jsonl(self.dir(earlier, "imagine") / "examples.jsonl"))
                counts["imagined/examples"] += len(imagined)
                examples += imagined
        counts["examples"] = write_chat_jsonl(path, examples)
        return dict(sorted(counts.items()))

    def _real_transitions(self, round_index: int) -> list[Path]:
        """The search's transitions (real: recorded in the browser) and every sample's."""
        paths = [self.dir(0, "search") / "trajectories" / "transitions.jsonl"]
        paths += [self.dir(r, "sample") / "transitions.jsonl" for r in range(1, round_index + 1)]
        return [path for path in paths if path.is_file() and path.stat().st_size > 0]

    def _failed_queries(self, sample: Path) -> list[Any]:
        """The training instances the agent failed this round, from their recorded first page."""
        from websynthesis.evolution.imagine import Query

        queries = []
        for episode in read_episodes(sample):
            if episode.accepted or not episode.steps:
                continue
            first = episode.steps[0]
            task, seed, attempt = episode.key
            queries.append(
                Query(
                    f"{task}@{seed}#{attempt}",
                    str(first.get("objective") or ""),
                    parse_axtree(str(first["observation"])),
                    tuple(first.get("allowed_sites") or ()),
                    action_set_field(first.get("action_set"), failer(sample, None, f"{task}.")),
                )
            )
        return queries

    # --- metrics -------------------------------------------------------------------------

    def _round_metrics(self, round_index: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        summary = read_json(self.dir(round_index, "evaluate") / "summary.json", None)
        if summary is not None:
            row["success_rate"] = summary["overall"]["success_rate"]
            row["tasks"] = {name: t["success_rate"] for name, t in summary["tasks"].items()}
        if round_index == 0:
            baseline = read_json(self.dir(0, "baseline") / "summary.json", None)
            if baseline is not None:
                row["baseline_success_rate"] = baseline["overall"]["success_rate"]
                row["baseline_tasks"] = {
                    name: t["success_rate"] for name, t in baseline["tasks"].items()
                }
        fidelity = read_json(self.dir(round_index, "fidelity") / "fidelity.json", None)
        if fidelity is not None and "model" in fidelity:
            row["fidelity"] = {
                "model": fidelity["model"],
                "copy_baseline": fidelity["copy_baseline"],
                "transitions": fidelity["model"].get("transitions"),
                "by_action": fidelity.get("by_action"),
            }
        data = read_json(self.dir(round_index, "data") / "policy_stats.json", None)
        if data is not None:
            row["policy_data"] = data
        skipped = read_json(self.dir(round_index, "policy") / "skipped.json", None)
        if skipped is not None:
            row["policy_skipped"] = skipped
        imagined = read_json(self.dir(round_index, "imagine") / "stats.json", None)
        if imagined is not None:
            row["imagine"] = imagined
        sample = read_json(self.dir(round_index, "sample") / "summary.json", None)
        if sample is not None:
            row["sample_success_rate"] = sample["overall"]["success_rate"]
        self.metrics["rounds"][str(round_index)] = row
        self.metrics["train_seeds"] = list(self.cfg.train_seeds)
        self.metrics["eval_seeds"] = list(self.cfg.eval_seeds)
        self.metrics["tasks"] = list(self.cfg.tasks)
        atomic_write_json(self.metrics_path, self.metrics)
        return row


class _NoBackend:
    """Stands in for a backend where only prompts and parsers are needed (never called)."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raise RuntimeError("building training data must not call a model")


def _copy_stage(source: Path, out: Path) -> None:
    """A stage another run finished as the same job, copied in (``reused.json`` says from
    where): its files are what the later stages read, as if it had run here."""
    shutil.copytree(source, out, dirs_exist_ok=True)
    atomic_write_json(out / "reused.json", {"from": str(source)})


def _value(path: str | None) -> str:
    return "null" if path is None else path


def _flat(row: dict[str, Any], prefix: str = "coevolve/") -> dict[str, float]:
    """The numbers of a round's metrics, for loggers (nested keys joined with ``/``)."""
    flat: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
