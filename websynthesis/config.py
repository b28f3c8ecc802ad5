"""Typed schemas for the Hydra configs in ``conf/``.

Each primary config (``conf/train.yaml``, ``synthesize.yaml``,
``evaluate.yaml``, ``serve.yaml``) lists its schema first in its defaults, so
the YAML groups are merged *into* these dataclasses. That is what makes
``search.iterations=abc`` or a misspelt ``search.iteratons=5`` fail at compose
time with Hydra's own message instead of deep inside a run.

Groups whose content is open by nature (``logger``: a map of Lightning loggers;
a backend's constructor arguments) are typed ``Any`` on purpose.

No field holds a secret: API keys are read from environment variables whose
*names* are configured (``api_key_env``), so a saved ``.hydra/config.yaml`` or a
W&B run config never contains a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    """Where things live; ``output_dir`` is the Hydra run dir of this job."""

    root_dir: str = "."
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${oc.env:WEBSYNTHESIS_CACHE,${oc.env:HOME,.}/.cache/websynthesis}"


@dataclass
class DataConfig:
    """Inputs: tasks to synthesize or evaluate on, and training files."""

    tasks: str = "demo"
    limit: int | None = None
    train_files: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.05


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
    score_low: float = 1.0
    score_high: float = 5.0


@dataclass
class ModelConfig:
    """A base model, how it is served (``backend``), and its roles."""

    name: str = MISSING
    path: str = MISSING
    seed: int = 0
    adapters: dict[str, str | None] = field(default_factory=dict)
    backend: Any = MISSING
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    cache: bool = True


@dataclass
class SearchConfig:
    """WebMCTS budgets and constants (the reference code's defaults in brackets)."""

    iterations: int = 20
    branch: int = 2
    max_depth: int = 8
    concurrent_trees: int = 32
    batch: bool = True
    exploration_constant: float = 0.7
    end_gate: float = 4.75
    roll_forward_steps: int = 0
    roll_policy: str = "greedy"
    alpha: float = 0.5
    time_limit_s: float | None = None
    token_budget: int | None = None
    cost_budget: float | None = None
    virtual_loss: float = 1.0


@dataclass
class StageConfig:
    """One curriculum stage: a data mix trained for some steps at some learning rate."""

    name: str = MISSING
    data: list[str] = field(default_factory=list)
    max_steps: int | None = None
    max_epochs: int | None = None
    lr: float = 2e-4


@dataclass
class CurriculumConfig:
    """An ordered list of stages run in one ``train.py`` call, adapter carried over."""

    name: str = MISSING
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments (the common ones; add more here as needed)."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = -1
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
    """A live environment: which tasks, and how the browser is driven."""

    name: str = MISSING
    tasks: list[str] = field(default_factory=list)
    headless: bool = True
    browser_path: str | None = None
    step_timeout_s: float = 30.0
    max_steps: int = 15
    site_urls: dict[str, str] = field(default_factory=dict)


@dataclass
class _JobConfig:
    task_name: str = MISSING
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: Any = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


@dataclass
class SynthesizeConfig(_JobConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    shard: int = 0
    num_shards: int = 1


@dataclass
class TrainConfig(_JobConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ckpt_path: str | None = None


@dataclass
class EvaluateConfig(_JobConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)


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


SCHEMAS: dict[str, type] = {
    "synthesize_schema": SynthesizeConfig,
    "train_schema": TrainConfig,
    "evaluate_schema": EvaluateConfig,
    "serve_schema": ServeConfig,
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; call before ``@hydra.main``)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
