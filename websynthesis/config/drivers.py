"""The schemas of the drivers that run other jobs as stages (``coevolve.py``,
``scripts/learning_evidence.py``): which tasks and seeds, and the Hydra overrides handed to
each stage's job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from websynthesis.config.groups import PathsConfig


@dataclass
class ImagineConfig:
    """WebEvolver's imagined trajectories for failed queries: at most ``max_steps`` steps with
    the world model as the web server, kept when the judge's verdict reaches ``threshold``."""

    enabled: bool = True
    max_steps: int = 7
    threshold: float = 1.0


@dataclass
class WarmStart:
    """Models (``policy``, ``world_model``) that rounds after the first continue training from
    the previous round's adapter instead of a new LoRA, each with extra overrides of its
    warm-started job (a shorter schedule: it starts where the last round ended)."""

    models: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    world_model: list[str] = field(default_factory=list)


@dataclass
class StageOverrides:
    """Hydra overrides of the co-evolution's stage jobs: ``common`` for all of them, ``env``
    for those in the environment (search, sample, evaluate, imagine), then per stage."""

    common: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    world_model: list[str] = field(default_factory=list)
    fidelity: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=list)


@dataclass
class CoevolveConfig:
    """The co-evolution driver (``python coevolve.py``; conf/coevolve.yaml).

    ``rounds`` after round 0 on ``tasks`` of ``environment`` (an env config); ``train_seeds``
    are searched and sampled, ``eval_seeds`` (disjoint, checked) only evaluated.
    ``mcts``: round 0 searches the training instances live (else it is the baseline alone);
    ``search_trajectories``: the round-0 search's kinds the policy learns from.
    ``warm_start``: which models later rounds continue rather than retrain from scratch.
    ``reuse``: stages (``round_0/baseline``, ``round_0/search``) that another run already ran
    as the same job, by their finished dir (copied, not run again: the learning evidence's
    untrained arm and live search). ``overrides`` are Hydra overrides of the stage jobs
    (train.py, synthesize.py and evaluate.py configs).
    """

    task_name: str = "coevolve"
    seed: int = 0
    tags: list[str] = field(default_factory=list)
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: Any = field(default_factory=dict)
    rounds: int = 3
    environment: str = "miniwob"
    tasks: list[str] = field(default_factory=list)
    train_seeds: list[int] = field(default_factory=list)
    eval_seeds: list[int] = field(default_factory=list)
    baseline: bool = True
    mcts: bool = True
    search_trajectories: list[str] = field(default_factory=lambda: ["valuable", "rollback"])
    imagine: ImagineConfig = field(default_factory=ImagineConfig)
    warm_start: WarmStart = field(default_factory=WarmStart)
    reuse: dict[str, str] = field(default_factory=dict)
    overrides: StageOverrides = field(default_factory=StageOverrides)


@dataclass
class EvidenceOverrides:
    """Hydra overrides of the evidence's stage jobs: ``common`` for all, ``env`` for those in
    the environment, ``search`` for both searches, then per stage (``live_search`` and
    ``imagined_search`` after ``search``; ``explore`` after ``evaluate``; ``textui`` after
    ``policy`` for the warm-up arm; ``wmla`` after ``evaluate`` for the look-ahead arm)."""

    common: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    live_search: list[str] = field(default_factory=list)
    imagined_search: list[str] = field(default_factory=list)
    explore: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    textui: list[str] = field(default_factory=list)
    world_model: list[str] = field(default_factory=list)
    reward_model: list[str] = field(default_factory=list)
    fidelity: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=list)
    wmla: list[str] = field(default_factory=list)


@dataclass
class ExploreConfig:
    """The episodes per training instance that the world and reward models learn from (cut
    to the live search's real steps): ``attempts`` in all, shared in turn by ``explorers``
    (``eval.policy`` values: ``model`` is the untrained policy, a random valid action of the
    declared set; ``random_click`` a click among the clickable elements)."""

    attempts: int = 4
    explorers: list[str] = field(default_factory=lambda: ["model", "random_click"])


@dataclass
class WmlaArm:
    """Which trained arm (fixed before any result) is evaluated again with look-ahead."""

    arm: str = "bc_imagined"


@dataclass
class EvidenceCoevolve:
    """WebEvolver's rounds after round 0 (0: none), with extra overrides of the co-evolution
    config itself (e.g. ``imagine.threshold=0.5``)."""

    rounds: int = 2
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvidenceConfig:
    """The learning evidence (``scripts/learning_evidence.py``; conf/learning_evidence.yaml,
    profiles in conf/evidence/; :mod:`websynthesis.pipelines.evidence`).

    Every arm is evaluated on ``tasks`` x ``eval_seeds`` x ``eval_attempts``; ``train_seeds``
    (disjoint, checked) are searched, explored and trained on; the headline arms run once per
    ``pipeline_seeds`` entry, the others on the first.
    """

    task_name: str = "learning_evidence"
    tags: list[str] = field(default_factory=list)
    paths: PathsConfig = field(default_factory=PathsConfig)
    environment: str = "miniwob"
    tasks: list[str] = field(default_factory=list)
    train_seeds: list[int] = field(default_factory=list)
    eval_seeds: list[int] = field(default_factory=list)
    eval_attempts: int = 1
    pipeline_seeds: list[int] = field(default_factory=lambda: [0, 1])
    part: str = "all"  # all | headline | ablations (see conf/learning_evidence.yaml)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    wmla: WmlaArm = field(default_factory=WmlaArm)
    coevolve: EvidenceCoevolve = field(default_factory=EvidenceCoevolve)
    overrides: EvidenceOverrides = field(default_factory=EvidenceOverrides)
    report_dir: str | None = None
    report_only: bool = False
