"""The config groups' schemas: one dataclass per group of ``conf/`` (paths, taskset, model and
its roles and batching, search, budget, curriculum, training data, LoRA, optimiser, trainer,
env, world), composed into the jobs' schemas in :mod:`websynthesis.config.jobs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING


@dataclass
class PathsConfig:
    """Where things live; ``output_dir`` is the Hydra run dir of this job."""

    root_dir: str = "."
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${oc.env:WEBSYNTHESIS_CACHE,${oc.env:HOME,.}/.cache/websynthesis}"


@dataclass
class TasksetConfig:
    """The tasks a job runs (synthesize, evaluate, capture; ``conf/taskset/``): ``path`` is a
    task file or directory (``demo``: the bundled tasks), ``limit`` its first tasks only."""

    path: str = "demo"
    limit: int | None = None


@dataclass
class RoleConfig:
    """How one role (policy, world model, reward, judge, reflection) asks its model."""

    adapter: str | None = None
    template: str = MISSING
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    constrained: bool = False
    max_retries: int = 1
    observation_chars: int | None = 16000
    step_chars: int = 1200
    observed_steps: int | None = None
    few_shot: bool = True  # the family's worked examples as earlier turns (policy)
    manual: bool = True  # the format manual in the system prompt (world model)
    thoughts: bool = True  # each history step's reasoning in the prompt (reward, judge)
    score_low: float = 1.0
    score_high: float = 5.0


@dataclass
class BatchingConfig:
    """Gathering concurrent requests into one backend call (``backends/batching.py``): with
    ``enabled``, synthesize.py's engine sends each wave's requests together, in calls of at
    most ``max_batch_size``; ``enabled=false`` (with ``search.concurrent_trees=1``) asks one
    request at a time, as the reference did. ``max_concurrent``: calls in flight at once
    (``None``: what the backend says, one for the local chunk decode, any number for the local
    backend batching continuously; raise it for a server that batches continuously)."""

    enabled: bool = True
    max_batch_size: int = 64
    max_concurrent: int | None = None


@dataclass
class ModelConfig:
    """A base model, how it is served (``backend``; ``role_backends.<role>`` serves one role
    elsewhere; ``batching``: requests gathered into backend calls), and its roles."""

    name: str = MISSING
    path: str = MISSING
    seed: int = 0
    adapters: dict[str, str | None] = field(default_factory=dict)
    backend: Any = MISSING
    role_backends: dict[str, Any] = field(default_factory=dict)  # backends/routing.py
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    cache: bool = True
    batching: BatchingConfig = field(default_factory=BatchingConfig)


@dataclass
class SearchConfig:
    """WebMCTS: the search core's knobs and how trees run together.

    The knobs are the core's :class:`~websynthesis.search.SearchSettings` (documented there)
    in the reward role's units (``model.roles.reward.score_low/high``, 1-5 by default):
    ``end_gate`` and ``failed_reward`` are scores on that scale, and ``exploration_constant``
    is the reference's ``c`` in ``V + c * sqrt(2 ln N / n)`` on it;
    :func:`websynthesis.synthesis.settings.search_settings` maps them onto the core's
    normalised UCT (``low``, ``high`` and ``seed`` come from the reward scale and the job;
    ``tests/test_config.py`` checks the two field lists agree). ``iterations`` and
    ``time_limit_s`` are per tree. ``concurrent_trees`` trees are searched at once, each with
    ``in_flight_per_tree`` iterations (1 keeps a seeded run reproducible). How requests are
    batched is ``model.batching``; the run's budgets are ``budget``.
    """

    iterations: int = 20
    branch: int = 2
    oversample: int = 2
    max_depth: int = 8
    exploration_constant: float = 0.7
    end_gate: float = 4.75
    failed_reward: float | None = None
    discount: float = 1.0
    roll_forward_steps: int = 0
    roll_policy: str = "greedy"
    roll_branch: int = 1
    rollout_value: str = "max"
    alpha: float = 0.5
    stop_on_solution: bool = False
    time_limit_s: float | None = None
    concurrent_trees: int = 32
    in_flight_per_tree: int = 1


@dataclass
class BudgetConfig:
    """What a whole synthesis run may spend, resumes included (``null``: no limit): total
    ``tokens``, and ``cost_usd`` priced from ``prices``. Checked by the run's usage tracker
    before every iteration of every tree: a spent budget stops each tree cleanly (its record
    says why) and leaves unstarted tasks for the next run."""

    tokens: int | None = None
    cost_usd: float | None = None


@dataclass
class StageConfig:
    """One curriculum stage: a data mix trained for some steps or epochs at some learning rate.

    ``data`` names mixes: keys of ``data.train_files`` (chat JSONL) or builders of
    ``websynthesis.training.mixes``. ``lr: null`` takes ``optim.lr``. ``trainer.max_steps`` and
    ``trainer.max_epochs``, when set, cap every stage (smoke tests, debugging).
    """

    name: str = MISSING
    data: list[str] = field(default_factory=list)
    max_steps: int | None = None
    max_epochs: int | None = None
    lr: float | None = None


@dataclass
class CurriculumConfig:
    """An ordered list of stages run in one ``train.py`` call, adapter carried over.

    ``trajectories`` is the behaviour-cloning mix; BC stages read it as
    ``${curriculum.trajectories}``, so the paper's ablation can sweep it.
    """

    name: str = MISSING
    trajectories: list[str] = field(default_factory=lambda: ["valuable", "rollback"])
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class TrainDataConfig:
    """What train.py reads and how it batches it.

    ``scale`` keeps a seeded fraction of each stage's training examples (a smaller scale's
    subset lies inside a larger one's; the validation split is drawn first, so it is the
    same at every scale). ``batch_tokens`` is one micro-batch per device: the sum of
    lengths when packing, rows x longest row when padding. ``packing: null`` packs only
    under a flash-attention (varlen) kernel: SDPA/eager materialise a dense mask over the
    whole packed row, slower than length-grouped padding (bench/bench_train.py).
    ``max_length`` examples are fitted by shortening the observation, never the target.
    ``mask_history`` puts the loss on the last assistant turn only (earlier ones are
    few-shot examples). ``train_files.<mix>`` (chat JSONL) replaces that mix's builder;
    ``val_fraction`` of each stage's examples is held out. The source fields (``tasks`` and
    ``limit``: a task file whose first pages feed TextUI; ``trajectories_dir``, ``transitions``,
    ``imagined``, ``external``, ``textui``, ``world_model``, and for the ``reward`` and
    ``judge`` mixes ``episodes`` (evaluate.py run dirs), ``trees`` (live-browser
    synthesize.py run dirs or trees.jsonl files) and ``reward`` (``unresolved``,
    ``refused``, ``balance``)) are read by the mix builders: see ``websynthesis.training.mixes``.
    """

    tasks: str | None = "demo"
    limit: int | None = None
    train_files: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.05
    trajectories_dir: str | None = None
    transitions: list[str] = field(default_factory=list)
    episodes: list[str] = field(default_factory=list)
    trees: list[str] = field(default_factory=list)
    reward: dict[str, Any] = field(default_factory=dict)
    imagined: bool = False
    external: list[Any] = field(default_factory=list)
    textui: dict[str, Any] = field(default_factory=dict)
    world_model: dict[str, Any] = field(default_factory=dict)
    seed: int = II("seed")
    scale: float = 1.0
    max_length: int = 4096
    batch_tokens: int = 16384
    packing: bool | None = None
    mask_history: bool = True
    num_workers: int = 0


@dataclass
class LoraConfig:
    """LoRA adapter shape; ``target_modules`` is ``all-linear`` or a list of module names."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class OptimConfig:
    """AdamW and its cosine schedule; ``warmup_steps`` (when set) wins over ``warmup_ratio``."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments (the common ones; add more here as needed)."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = -1  # -1: the stages decide; otherwise a cap on every stage
    max_epochs: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 0
    deterministic: Any = False
    benchmark: bool | None = None
    fast_dev_run: Any = False
    enable_checkpointing: bool = True
    enable_progress_bar: bool = True
    default_root_dir: str | None = "${paths.output_dir}"


@dataclass
class EnvConfig:
    """A live environment (``websynthesis.env``): which tasks, and how the browser is driven.

    ``name`` is ``miniwob`` or ``webarena``. ``tasks``: MiniWoB++ task names
    (``click-button``) or WebArena task ids. ``browser_path``: a Chromium binary (``null``:
    ``$WEBSYNTHESIS_CHROMIUM``, else the system Chromium on ``PATH``). A step (a reset)
    taking longer than ``step_timeout_s`` (``reset_timeout_s``) is a browser failure: the
    browser is killed and the episode recorded as an error. ``action_timeout_ms``: how long
    each Playwright call of an action waits (BrowserGym's fixed 500 is outlasted by valid
    clicks on a loaded machine: websynthesis/env/worker.py). ``max_steps`` truncates an
    episode. ``pool_size`` browsers run episodes in parallel. ``miniwob_url``: the base URL
    of a MiniWoB++ server (``null``: the pages of the ``miniwob`` package, as ``file://``).
    ``site_urls``: WebArena site -> base URL (browsergym-webarena's ``WA_*`` conventions).
    ``actions``: the environment's declared action set, the verbs its pages take
    (:mod:`websynthesis.web.action_sets`; empty: WebArena's twelve). The policy's prompt,
    grammar and validation, the browser's refusals and the recorded data follow it.
    ``login``: a WebArena task with ``require_login`` starts logged in to its sites
    (:mod:`websynthesis.env.login`): ``logins.<site>`` overrides the documented account and
    the form (``password_env`` names the variable holding a password), states are saved
    under ``auth_dir`` and reused for ``login_max_age_s``.
    """

    name: str = MISSING
    tasks: list[str] = field(default_factory=list)
    headless: bool = True
    browser_path: str | None = None
    step_timeout_s: float = 30.0
    reset_timeout_s: float = 60.0
    action_timeout_ms: int = 2000
    max_steps: int = 15
    pool_size: int = 1
    miniwob_url: str | None = None
    site_urls: dict[str, str] = field(default_factory=dict)
    # The verbs its pages take (websynthesis.web.action_sets); [] = WebArena's twelve.
    actions: list[str] = field(default_factory=list)
    login: bool = True
    logins: dict[str, Any] = field(default_factory=dict)
    auth_dir: str | None = None  # null: ~/.cache/websynthesis/webarena_auth
    login_max_age_s: float = 3600.0


@dataclass
class WorldConfig:
    """What synthesize.py searches on (``conf/world/``).

    ``name``: ``model``, the world model imagining every page from the first page of each
    task in ``taskset.path`` and the reward model scoring it (WebSynthesis' WebMCTS); or
    ``browser``, live MiniWoB++ pages in ``env.pool_size`` browsers, made reversible by
    reset and replay: one tree per instance (a task of ``env.tasks`` under a seed of
    ``seeds``), scored by the environment's own reward. ``seeds`` are for ``browser`` only:
    a MiniWoB++ task shows another page and instruction under each seed.
    ``accept_malformed_pages`` (``model``): a predicted page with structural errors is kept
    (repaired) once the world model's retries are spent, instead of failing the step.
    """

    name: str = "model"
    seeds: list[int] = field(default_factory=lambda: [0])
    accept_malformed_pages: bool = False
