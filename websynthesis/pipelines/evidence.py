"""The learning evidence: does MCTS inside the learned world model train a better agent?

One run dir, every arm evaluated on the same held-out episodes (``eval_seeds`` x ``tasks`` x
``eval_attempts``), paired. For each pipeline seed ``s`` (``seed_<s>/``):

1. ``live_search``: MCTS in the real browser on the training instances (the environment's
   reward): ``bc_live``'s data. Its real steps (resets + replays + direct steps) are the
   budget of the imagined side.
2. ``explore``: episodes on the training instances (``explore.attempts`` each, taken in turn
   by ``explore.explorers``: the untrained policy, a random valid action of the declared set,
   and a random click, which reaches the successes a reward model needs to see); ``real_data``
   keeps them breadth-first (every instance's first attempt, then the second...) while their
   real steps (a reset + the steps) fit the budget. This is all the real environment the
   imagined side ever sees.
3. ``world_model`` (trained on ``real_data``'s transitions) and ``reward_model`` (the reward
   and judge roles on its episodes, labelled by the environment's reward).
4. ``first_pages``: the training instances' first pages (as ``real_data`` recorded them) as a
   task file with ``state``; ``imagined_search``: synthesize.py ``world=model`` from them with
   the two trained models, no browser; ``reproduce``: every imagined success replayed in the
   browser on its instance (:mod:`websynthesis.evaluation.replay`).
5. The policies, each trained from scratch and evaluated: ``bc_imagined`` (=
   ``bc_imagined_valuable_rollback``: imagined valuable + rollback) and ``bc_live`` (live
   valuable + rollback) on every pipeline seed. After all seeds, the baselines (below), then
   on the first seed ``fidelity`` (the world model on the held-out steps of the untrained and
   trained policies, by action kind, against copying the page), ``world_model_fit`` (the same
   measure on a sample of its own training transitions: an underfit model is poor there too,
   one that does not generalise is not) and ``reward_quality`` (the trained reward model and
   judge on the same held-out episodes, against a constant). That is ``part=headline``, in
   that order: a run stopped early has what only the pipeline makes.
6. ``part=ablations`` (after it, same run dir), on the first seed: ``bc_imagined_valuable``,
   ``textui_bc_imagined`` (the TextUI warm-up on ``real_data``'s and the imagined pages, then
   BC on the imagined trajectories), ``wmla`` (``wmla.arm`` with the world model's
   look-ahead), ``greedy`` (``wmla.arm`` at temperature 0 without it: WMLA's first candidate
   is the greedy action), and the co-evolution rounds. ``part=all`` runs both in one session.

Shared by all seeds: ``untrained`` (the policy with no adapter under its grammar: a random
valid action) and ``random_click``. ``coevolve``: WebEvolver's rounds
(:mod:`websynthesis.pipelines.coevolve`) on the same tasks and seeds, ``coevolve.rounds``
after round 0; its round 0's baseline and live search are the same jobs as ``untrained`` and
the first seed's ``live_search``, which it copies rather than runs again. A policy whose data
came out empty is not trained: its arm is the untrained policy, marked ``trained: false``,
never left out. ``results.json`` (:func:`results`) holds every number the report shows
(:mod:`websynthesis.pipelines.evidence_results`, with the arms' definitions).
"""

from __future__ import annotations

import filecmp
import json
import logging
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from websynthesis.data.chat import read_chat_jsonl, write_chat_jsonl
from websynthesis.data.records import read_records
from websynthesis.data.tasks import Task
from websynthesis.io import atomic_write_json, atomic_write_text
from websynthesis.pipelines.evidence_results import (
    ABLATION_ARMS,
    HEADLINE,
    POLICY_DATA,
    results,
)
from websynthesis.pipelines.stages import StagedRun, check_split, read_json

log = logging.getLogger(__name__)

# part=headline: the baselines and every pipeline seed's data engine and headline arms (with
# fidelity and reward quality); part=ablations, on the same run dir after it: the first
# seed's other arms, WMLA and co-evolution; part=all: both in one session.
PARTS = ("all", "headline", "ablations")
ABLATIONS_NEED = ("real_data", "imagined_search", "world_model", "train_bc_imagined")
# Training transitions world_model_fit reads (every k-th): a rate to a few points, a minute.
FIT_SAMPLE = 300


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``results.json``'s content."""
    return Evidence(cfg).run()


class Evidence:
    """One evidence run dir (see the module docstring)."""

    def __init__(self, cfg: DictConfig) -> None:
        check_split(cfg)
        if not cfg.pipeline_seeds:
            raise ValueError("pipeline_seeds must list at least one seed")
        if cfg.wmla.arm not in POLICY_DATA:
            raise ValueError(f"wmla.arm must be one of {sorted(POLICY_DATA)}, not {cfg.wmla.arm!r}")
        self.cfg = cfg
        self.out = Path(cfg.paths.output_dir)
        self.seeds = [int(seed) for seed in cfg.pipeline_seeds]
        self.stages = StagedRun(self.out, cfg.overrides.common, self.seeds[0])

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        part = str(self.cfg.part)
        if part not in PARTS:
            raise ValueError(f"part must be one of {list(PARTS)}, not {part!r}")
        headline, ablations = part in ("all", "headline"), part in ("all", "ablations")
        stage, first = self.stages.stage, self.seeds[0]
        if headline:
            # the pipeline's arms before the two baselines, which are cheap and need nothing
            for seed in self.seeds:
                self._headline(seed)
            stage("untrained", lambda out: self._evaluate(out, policy=None))
            stage(
                "random_click",
                lambda out: self._evaluate(out, policy=None, extra=["eval.policy=random_click"]),
            )
            # on held-out steps of the untrained policy and of the first seed's arms
            stage(f"seed_{first}/fidelity", lambda out: self._fidelity(out, first))
            stage(f"seed_{first}/world_model_fit", lambda out: self._world_model_fit(out, first))
            stage(f"seed_{first}/reward_quality", lambda out: self._reward_quality(out, first))
        if ablations:
            needed = [f"seed_{first}/{name}" for name in ABLATIONS_NEED]
            missing = [name for name in needed if name not in self.stages.done]
            if missing:
                raise RuntimeError(
                    f"{self.out}: part=ablations builds on the headline part, which has not "
                    f"finished {missing}: run part=headline (or part=all) on this run dir first"
                )
            at = f"seed_{first}"
            for arm in ABLATION_ARMS:
                stage(f"{at}/train_{arm}", lambda out, a=arm: self._train_policy(out, first, a))
                stage(f"{at}/eval_{arm}", lambda out, a=arm: self._evaluate_arm(out, first, a))
            stage(f"{at}/eval_wmla", lambda out: self._evaluate_wmla(out, first))
            stage(f"{at}/eval_greedy", lambda out: self._evaluate_greedy(out, first))
            if int(self.cfg.coevolve.rounds) > 0:
                stage("coevolve", self._coevolve)
        found = results(self.cfg, self.out)
        atomic_write_json(self.out / "results.json", found)
        return found

    def _headline(self, seed: int) -> None:
        """One pipeline seed's data engine and its headline arms."""
        stage, at = self.stages.stage, f"seed_{seed}"
        stage(f"{at}/live_search", lambda out: self._live_search(out, seed))
        stage(f"{at}/explore", lambda out: self._explore(out, seed))
        stage(f"{at}/real_data", lambda out: self._real_data(out, seed))
        stage(f"{at}/world_model", lambda out: self._world_model(out, seed))
        stage(f"{at}/reward_model", lambda out: self._reward_model(out, seed))
        stage(f"{at}/first_pages", lambda out: self._first_pages(out, seed))
        stage(f"{at}/imagined_search", lambda out: self._imagined_search(out, seed))
        stage(f"{at}/reproduce", lambda out: self._reproduce(out, seed))
        for arm in HEADLINE:
            stage(f"{at}/train_{arm}", lambda out, a=arm: self._train_policy(out, seed, a))
            stage(f"{at}/eval_{arm}", lambda out, a=arm: self._evaluate_arm(out, seed, a))

    def dir(self, seed: int, stage: str) -> Path:
        return self.out / f"seed_{seed}" / stage

    # --- jobs --------------------------------------------------------------------------------

    def _env(self) -> list[str]:
        tasks = ",".join(str(task) for task in self.cfg.tasks)
        return [f"env={self.cfg.environment}", f"env.tasks=[{tasks}]", *self.cfg.overrides.env]

    def _evaluate(
        self,
        out: Path,
        *,
        policy: str | None,
        world_model: str | None = None,
        seeds: Iterable[int] | None = None,
        attempts: int | None = None,
        extra: Iterable[str] = (),
        seed: int | None = None,
    ) -> None:
        from websynthesis.pipelines import evaluate

        listed = ",".join(str(s) for s in (self.cfg.eval_seeds if seeds is None else seeds))
        overrides = [
            *self._env(),
            f"model.adapters.policy={_value(policy)}",
            f"model.adapters.world_model={_value(world_model)}",
            f"eval.seeds=[{listed}]",
            f"eval.attempts={int(self.cfg.eval_attempts if attempts is None else attempts)}",
            *self.cfg.overrides.evaluate,
            *extra,
        ]
        summary = evaluate.run(self.stages.job("evaluate", out, overrides, seed))
        if not summary["overall"].get("n"):
            raise RuntimeError(f"{out}: the evaluation ran no episode")

    def _live_search(self, out: Path, seed: int) -> None:
        from websynthesis.pipelines import synthesize

        listed = ",".join(str(s) for s in self.cfg.train_seeds)
        overrides = [
            *self._env(),
            "world=browser",
            f"world.seeds=[{listed}]",
            *self.cfg.overrides.search,
            *self.cfg.overrides.live_search,
        ]
        synthesize.run(self.stages.job("synthesize", out, overrides, seed))

    def _explore(self, out: Path, seed: int) -> None:
        """``explore.attempts`` episodes per training instance, taken in turn by the
        ``explore.explorers`` (each in ``out/<explorer>``): attempt ``a`` is explorer
        ``a % len(explorers)``'s. Each pipeline seed draws its own exploration
        (``eval.draw``): the held-out evaluations share one draw, to be paired."""
        explorers = self._explorers()
        for index, explorer in enumerate(explorers):
            attempts = len(range(index, int(self.cfg.explore.attempts), len(explorers)))
            if attempts:
                self._evaluate(
                    out / explorer,
                    policy=None,
                    seeds=self.cfg.train_seeds,
                    attempts=attempts,
                    extra=[
                        f"eval.policy={explorer}",
                        f"eval.draw={seed}",
                        *self.cfg.overrides.explore,
                    ],
                    seed=seed,
                )

    def _explorers(self) -> list[str]:
        explorers = [str(name) for name in self.cfg.explore.explorers]
        if not explorers:
            raise ValueError("explore.explorers must name at least one (e.g. [model])")
        return explorers

    def _real_data(self, out: Path, seed: int) -> None:
        budget = live_real_steps(self.dir(seed, "live_search"))
        explore = self.dir(seed, "explore")
        sources = [explore / name for name in self._explorers() if (explore / name).is_dir()]
        kept = within_budget(sources, out, budget)
        atomic_write_json(out / "budget.json", kept | {"budget": budget})

    def _world_model(self, out: Path, seed: int) -> None:
        from websynthesis.pipelines import train

        transitions = self.dir(seed, "real_data") / "transitions.jsonl"
        overrides = [f"data.transitions=[{transitions}]", *self.cfg.overrides.world_model]
        train.run(self.stages.job("train", out, overrides, seed))

    def _reward_model(self, out: Path, seed: int) -> None:
        from websynthesis.pipelines import train

        episodes = self.dir(seed, "real_data")
        overrides = [f"data.episodes=[{episodes}]", *self.cfg.overrides.reward_model]
        train.run(self.stages.job("train", out, overrides, seed))

    def _first_pages(self, out: Path, seed: int) -> None:
        tasks = first_pages(self.dir(seed, "real_data"))
        if not tasks:
            raise RuntimeError(f"{self.dir(seed, 'real_data')}: no first page of any instance")
        lines = [json.dumps(task.to_config(), ensure_ascii=False) for task in tasks]
        atomic_write_text(out / "tasks.jsonl", "\n".join(lines) + "\n")

    def _imagined_search(self, out: Path, seed: int) -> None:
        from websynthesis.pipelines import synthesize

        reward = self._adapter(seed, "reward_model")
        overrides = [
            *self._env(),
            "world=model",
            f"taskset.path={self.dir(seed, 'first_pages') / 'tasks.jsonl'}",
            f"model.adapters.world_model={_value(self._adapter(seed, 'world_model'))}",
            f"model.adapters.reward={_value(reward)}",
            f"model.adapters.judge={_value(reward)}",
            *self.cfg.overrides.search,
            *self.cfg.overrides.imagined_search,
        ]
        synthesize.run(self.stages.job("synthesize", out, overrides, seed))

    def _reproduce(self, out: Path, seed: int) -> None:
        from websynthesis.env.browsergym_env import make_env
        from websynthesis.evaluation.replay import imagined_paths, replay_all, reproduction

        valuable = self.dir(seed, "imagined_search") / "trajectories" / "valuable.jsonl"
        paths = imagined_paths(valuable) if valuable.is_file() else []
        job = self.stages.job("evaluate", out, self._env(), seed)
        env_config = OmegaConf.to_object(job.env)
        replays = replay_all(lambda: make_env(env_config), paths, int(job.env.pool_size))  # type: ignore[arg-type]
        lines = "".join(json.dumps(r.to_dict()) + "\n" for r in replays)
        atomic_write_text(out / "replays.jsonl", lines)
        atomic_write_json(out / "reproduction.json", reproduction(replays))

    def _train_policy(self, out: Path, seed: int, arm: str) -> None:
        from websynthesis.pipelines import train

        search, kinds, curriculum = POLICY_DATA[arm]
        found = self.dir(seed, search) / "trajectories"
        data = out / "policy.jsonl"
        counts = {kind: 0 for kind in kinds}
        examples = []
        for kind in kinds:
            rows = (
                list(read_chat_jsonl(found / f"{kind}.jsonl"))
                if (found / f"{kind}.jsonl").is_file()
                else []
            )
            counts[kind] = len(rows)
            examples += rows
        counts["examples"] = write_chat_jsonl(data, examples)
        atomic_write_json(out / "policy_data.json", counts)  # train.py writes data_stats.json
        same = self._same_data(seed, arm, data)
        if same is not None:
            atomic_write_json(out / "same_as.json", {"arm": same})
            return
        if not counts["examples"]:
            atomic_write_json(
                out / "skipped.json", {"skipped": "no trajectories", "trained": False}
            )
            log.warning("evidence: %s has no data; its arm is the untrained policy", arm)
            return
        overrides = [
            f"curriculum={curriculum}",
            "curriculum.trajectories=[trajectories]",
            f"+data.train_files.trajectories={data}",
            *self.cfg.overrides.policy,
        ]
        if curriculum == "textui_then_bc":
            overrides += [
                f"data.transitions=[{self.dir(seed, 'real_data') / 'transitions.jsonl'}]",
                f"data.trajectories_dir={found}",
                "data.imagined=true",
                *self.cfg.overrides.textui,
            ]
        train.run(self.stages.job("train", out, overrides, seed))

    def _same_data(self, seed: int, arm: str, data: Path) -> str | None:
        """An earlier arm of this seed trained on byte-identical data (imagined valuable
        only vs valuable + rollback where no rollback came out): its adapter and episodes
        stand for this arm too, rather than a second identical training."""
        for other, (_, _, curriculum) in POLICY_DATA.items():
            if other == arm:
                return None
            theirs = self.dir(seed, f"train_{other}") / "policy.jsonl"
            if (
                curriculum == POLICY_DATA[arm][2]
                and theirs.is_file()
                and filecmp.cmp(theirs, data, shallow=False)
            ):
                return other
        return None

    def _policy_adapter(self, seed: int, arm: str) -> str | None:
        same = read_json(self.dir(seed, f"train_{arm}") / "same_as.json", None)
        if same is not None:
            return self._policy_adapter(seed, same["arm"])
        return self._adapter(seed, f"train_{arm}")

    def _evaluate_arm(self, out: Path, seed: int, arm: str) -> None:
        same = read_json(self.dir(seed, f"train_{arm}") / "same_as.json", None)
        if same is not None:
            shutil.copytree(self.dir(seed, f"eval_{same['arm']}"), out, dirs_exist_ok=True)
            atomic_write_json(out / "same_as.json", same)
            return
        self._evaluate(out, policy=self._policy_adapter(seed, arm), seed=seed)

    def _evaluate_wmla(self, out: Path, seed: int) -> None:
        wmla = self.cfg.wmla
        self._evaluate(
            out,
            policy=self._policy_adapter(seed, str(wmla.arm)),
            world_model=self._adapter(seed, "world_model"),
            extra=["eval.wmla.enabled=true", *self.cfg.overrides.wmla],
            seed=seed,
        )

    def _evaluate_greedy(self, out: Path, seed: int) -> None:
        """``wmla.arm``'s policy at temperature 0 with no look-ahead: WMLA's first candidate
        is the greedy action, while the policy alone samples (the role's temperature), so
        this arm tells the look-ahead's choice apart from greedy decoding."""
        policy = self._policy_adapter(seed, str(self.cfg.wmla.arm))
        self._evaluate(out, policy=policy, seed=seed, extra=["eval.temperature=0"])

    def _fidelity(self, out: Path, seed: int) -> None:
        """The world model on the held-out real steps of the untrained and trained policies."""
        sources = [self.out / "untrained", *(self.dir(seed, f"eval_{arm}") for arm in HEADLINE)]
        rows = (row for source in sources for row in read_records(source / "transitions.jsonl"))
        held_out = out / "held_out_transitions.jsonl"
        atomic_write_text(held_out, _jsonl(rows))
        self._world_model_on(out, seed, held_out)

    def _world_model_fit(self, out: Path, seed: int) -> None:
        """The world model on every k-th of its own training transitions (at most
        ``FIT_SAMPLE``): how well it fitted what it was shown, beside ``fidelity``."""
        rows = list(read_records(self.dir(seed, "real_data") / "transitions.jsonl"))
        sample = out / "training_transitions.jsonl"
        step = max(1, math.ceil(len(rows) / FIT_SAMPLE))
        atomic_write_text(sample, _jsonl(rows[::step]))
        self._world_model_on(out, seed, sample)

    def _world_model_on(self, out: Path, seed: int, transitions: Path) -> None:
        """``fidelity.json`` in ``out``: seed ``seed``'s world model on ``transitions``."""
        from websynthesis.pipelines import evaluate

        overrides = [
            *self._env(),
            f"model.adapters.world_model={_value(self._adapter(seed, 'world_model'))}",
            "eval=world_model",
            f"eval.transitions={transitions}",
            *self.cfg.overrides.fidelity,
        ]
        evaluate.run(self.stages.job("evaluate", out, overrides, seed))

    def _reward_quality(self, out: Path, seed: int) -> None:
        """The trained reward model and judge on the held-out episodes' steps and
        trajectories (those ``fidelity`` reads), labelled by the environment, against a
        constant score (:mod:`websynthesis.evaluation.reward_quality`)."""
        from websynthesis.evaluation.reward_quality import quality_report
        from websynthesis.roles.client import ModelClient

        reward = _value(self._adapter(seed, "reward_model"))
        job = self.stages.job(
            "evaluate",
            out,
            [*self._env(), f"model.adapters.reward={reward}", f"model.adapters.judge={reward}"],
            seed,
        )
        sources = [self.out / "untrained", *(self.dir(seed, f"eval_{arm}") for arm in HEADLINE)]
        client = ModelClient.from_config(job.model)
        try:
            report = quality_report(client, sources, seed=seed, judge=True)
        finally:
            client.close()
        atomic_write_json(out / "reward_quality.json", report)

    def _coevolve(self, out: Path) -> None:
        from hydra import compose

        from websynthesis.pipelines import coevolve

        c = self.cfg
        cfg = compose(
            config_name="coevolve",
            overrides=[f"paths.output_dir={out}", "logger=none", *c.coevolve.overrides],
        )
        OmegaConf.update(cfg, "rounds", int(c.coevolve.rounds))
        for key in ("environment", "tasks", "train_seeds", "eval_seeds"):
            OmegaConf.update(
                cfg,
                key,
                OmegaConf.to_container(c[key]) if key != "environment" else c[key],
                merge=False,
            )
        OmegaConf.update(cfg, "seed", self.seeds[0])
        # Round 0's baseline and live search are this run's untrained arm and first seed's
        # live search, the same jobs (same overrides, seed and attempts): copied, not rerun.
        reuse = {
            "round_0/baseline": "untrained",
            "round_0/search": f"seed_{self.seeds[0]}/live_search",
        }
        done = set(self.stages.done)
        finished = {name: str(self.out / ours) for name, ours in reuse.items() if ours in done}
        OmegaConf.update(cfg, "reuse", finished, merge=False)
        attempts = f"eval.attempts={int(c.eval_attempts)}"  # as every arm here is evaluated
        stage_overrides = {
            "common": [*c.overrides.common],
            "env": [*c.overrides.env],
            "search": [*c.overrides.search, *c.overrides.live_search],
            "sample": [*c.overrides.evaluate, *c.overrides.explore],
            "policy": [
                "curriculum=bc_only",
                "curriculum.trajectories=[trajectories]",
                *c.overrides.policy,
            ],
            "world_model": [*c.overrides.world_model],
            "fidelity": [*c.overrides.fidelity],
            "evaluate": [attempts, *c.overrides.evaluate],
        }
        for key, value in stage_overrides.items():
            OmegaConf.update(cfg, f"overrides.{key}", value, merge=False)
        out.mkdir(parents=True, exist_ok=True)
        coevolve.run(cfg)

    def _adapter(self, seed: int, stage: str) -> str | None:
        path = self.dir(seed, stage) / "adapter"
        return str(path) if path.is_dir() else None


# --- real steps ------------------------------------------------------------------------------


def live_real_steps(search: Path) -> int:
    """The real environment steps a live search took: resets, replayed and direct steps."""
    stats = read_json(search / "stats.json", None)
    if stats is None:
        raise RuntimeError(f"{search}: no stats.json (the live search did not finish)")
    world = stats["counters"]["world"]
    return int(world["resets"]) + int(world["replayed_steps"]) + int(world["direct"])


def within_budget(explorers: Sequence[Path], out: Path, budget: int) -> dict[str, int]:
    """Copy the explorers' episodes (evaluate.py run dirs) into ``out`` (one such run dir)
    breadth-first (attempt, then explorer, then seed, then task) while their real steps (one
    reset + the steps each) fit ``budget``. Explorer ``i``'s attempt ``a`` becomes attempt
    ``a * len(explorers) + i`` (its record says ``explorer: i``), so the keys stay apart.
    Returns what was kept and left (errored episodes are left)."""
    from websynthesis.data.episodes import latest_episodes, read_episodes

    found = [
        (episode.key[2], index, episode.key[1], episode.key[0], episode)
        for index, explore in enumerate(explorers)
        for episode in read_episodes(explore)
    ]
    kept, spent = [], 0
    for attempt, index, _, _, episode in sorted(found, key=lambda row: row[:4]):
        cost = 1 + len(episode.steps)
        if spent + cost <= budget:
            spent += cost
            renumbered = attempt * len(explorers) + index
            record = episode.record | {"attempt": renumbered, "explorer": index}
            kept.append((record, [row | {"attempt": renumbered} for row in episode.steps]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "episodes.jsonl", _jsonl(record for record, _ in kept))
    atomic_write_text(out / "transitions.jsonl", _jsonl(row for _, rows in kept for row in rows))
    listed = sum(len(latest_episodes(explore / "episodes.jsonl")) for explore in explorers)
    return {
        "episodes": len(kept),
        "transitions": sum(len(rows) for _, rows in kept),
        "real_steps": spent,
        "left_out": listed - len(kept),
        "successes": sum(record.get("success") is True for record, _ in kept),
    }


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def first_pages(real_data: Path) -> list[Task]:
    """One task per training instance: its first page and instruction as recorded."""
    from websynthesis.data.tasks import instance_id

    seen: dict[str, Task] = {}
    for row in read_records(real_data / "transitions.jsonl"):
        if int(row["step"]) != 0:
            continue
        task_id = instance_id(str(row["task_id"]), int(row["seed"]))
        if task_id not in seen:
            seen[task_id] = Task(
                task_id=task_id,
                intent=str(row["objective"]),
                start_url=str(row.get("url") or ""),
                state=str(row["observation"]),
                actions=tuple(row.get("action_set") or ()),
            )
    return [seen[key] for key in sorted(seen)]


# --- results ----------------------------------------------------------------------------------


def _value(path: str | None) -> str:
    return "null" if path is None else path
