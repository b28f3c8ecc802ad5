"""The schemas of the single jobs (``synthesize.py``, ``train.py``, ``evaluate.py``,
``serve.py``, the first-page capture): each merges the groups of
:mod:`websynthesis.config.groups` under one root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from websynthesis.config.groups import (
    BudgetConfig,
    CurriculumConfig,
    EnvConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    SearchConfig,
    TasksetConfig,
    TrainDataConfig,
    TrainerConfig,
    WorldConfig,
)


@dataclass
class _JobConfig:
    task_name: str = MISSING
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: Any = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


@dataclass
class SynthesizeConfig(_JobConfig):
    """synthesize.py: search this shard's tasks and extract training data from the trees.

    ``rollback_per_step``: failed siblings turned into rollback examples at each step of the
    best path, worst first (the reference kept one). ``prices``: USD per million tokens by
    model name (``{name: {prompt_per_1m, completion_per_1m}}``), for costs and
    ``budget.cost_usd`` (:class:`BudgetConfig`). ``progress``: a live progress bar.
    ``sample_trajectories``: rows of the sample table sent to the loggers. ``world`` is what
    the trees are searched on (:class:`WorldConfig`); ``env`` is the live environment
    ``world=browser`` drives (unused by ``world=model``).
    """

    taskset: TasksetConfig = field(default_factory=TasksetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    shard: int = 0
    num_shards: int = 1
    rollback_per_step: int = 1
    prices: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    sample_trajectories: int = 8
    skip_without_state: bool = False


@dataclass
class TrainConfig(_JobConfig):
    """train.py: ``ckpt_path`` resumes the first unfinished stage (else its ``last.ckpt``);
    ``init_adapter`` (a PEFT adapter dir) is where the first stage starts instead of a new
    LoRA (its own rank and targets win over ``lora``); ``teacher`` is an optional backend
    (``_target_``) handed to the data builders."""

    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    gradient_checkpointing: bool = True
    checkpoint_every_n_steps: int = 50
    ckpt_path: str | None = None
    init_adapter: str | None = None
    teacher: Any = None


@dataclass
class WmlaConfig:
    """World-model look-ahead (WebEvolver): ``candidates`` actions (greedy + samples asked to
    differ, at ``temperature``), each simulated ``depth`` steps, from step ``from_step`` on."""

    enabled: bool = False
    candidates: int = 3
    depth: int = 1
    temperature: float = 1.0
    from_step: int = 0


@dataclass
class EvalConfig:
    """What evaluate.py measures (``conf/eval/``): ``mode`` ``agent`` or ``world_model``.

    agent: each task runs ``attempts`` times per seed; seeds are ``seeds`` when given, else
    attempt ``i`` runs seed ``seed_offset + i`` (keep it clear of training seeds). pass@k is
    reported for each ``k`` in ``k`` (``null``: 1 to the episodes per task) up to a task's
    scored episodes. ``temperature`` overrides the
    policy role's (``null``: keep it). ``max_failures`` failure steps in a row (unusable policy
    output) end an episode. ``policy``: ``model`` (the policy role) or ``random_click`` (a
    uniform random click among the page's clickable elements, the layout-only baseline of
    :mod:`websynthesis.evaluation.baselines`). ``draw``: the sampling stream (each step's
    sample is seeded by its task, seed, attempt and step, the same for every arm; another
    draw is an independent one, e.g. exploration per pipeline seed). world_model: fidelity on
    the real rows of ``transitions`` (at most ``limit``), ``batch`` predictions per model call.
    """

    mode: str = "agent"
    policy: str = "model"
    attempts: int = 1
    k: list[int] | None = None
    seeds: list[int] | None = None
    seed_offset: int = 1000
    max_steps: int = 10
    max_failures: int = 3
    temperature: float | None = None
    draw: int = 0
    wmla: WmlaConfig = field(default_factory=WmlaConfig)
    transitions: str | None = None
    limit: int | None = None
    batch: int = 16


@dataclass
class EvaluateConfig(_JobConfig):
    taskset: TasksetConfig = field(default_factory=TasksetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class ServeConfig:
    task_name: str = "serve"
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    auth_token_env: str | None = None
    batch_window_ms: float = 10.0
    max_batch_size: int = 64


@dataclass
class CaptureConfig(_JobConfig):
    """``python -m websynthesis.env.capture``: each task's first page opened in the browser
    (``env``, WebArena's sites), written back as ``state`` into ``out`` (JSONL);
    ``recapture``: also the tasks that have a state already."""

    task_name: str = "capture"
    taskset: TasksetConfig = field(default_factory=TasksetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    out: str = MISSING
    recapture: bool = False
