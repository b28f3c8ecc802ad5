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

The schemas are split by what they describe: :mod:`.groups` (one per config group),
:mod:`.jobs` (the single jobs) and :mod:`.drivers` (jobs made of other jobs); all are
importable from here.
"""

from __future__ import annotations

from importlib import resources

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from websynthesis.config.drivers import (
    CoevolveConfig,
    EvidenceCoevolve,
    EvidenceConfig,
    EvidenceOverrides,
    ExploreConfig,
    ImagineConfig,
    StageOverrides,
    WarmStart,
    WmlaArm,
)
from websynthesis.config.groups import (
    BatchingConfig,
    BudgetConfig,
    CurriculumConfig,
    EnvConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    RoleConfig,
    SearchConfig,
    StageConfig,
    TasksetConfig,
    TrainDataConfig,
    TrainerConfig,
    WorldConfig,
)
from websynthesis.config.jobs import (
    CaptureConfig,
    EvalConfig,
    EvaluateConfig,
    ServeConfig,
    SynthesizeConfig,
    TrainConfig,
    WmlaConfig,
)

__all__ = [
    "SCHEMAS",
    "BatchingConfig",
    "BudgetConfig",
    "CaptureConfig",
    "CoevolveConfig",
    "CurriculumConfig",
    "EnvConfig",
    "EvalConfig",
    "EvaluateConfig",
    "EvidenceCoevolve",
    "EvidenceConfig",
    "EvidenceOverrides",
    "ExploreConfig",
    "ImagineConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "PathsConfig",
    "RoleConfig",
    "SearchConfig",
    "ServeConfig",
    "StageConfig",
    "StageOverrides",
    "SynthesizeConfig",
    "TasksetConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainerConfig",
    "WarmStart",
    "WmlaArm",
    "WmlaConfig",
    "WorldConfig",
    "package_data",
    "register_configs",
]

SCHEMAS: dict[str, type] = {
    "synthesize_schema": SynthesizeConfig,
    "train_schema": TrainConfig,
    "evaluate_schema": EvaluateConfig,
    "serve_schema": ServeConfig,
    "coevolve_schema": CoevolveConfig,
    "learning_evidence_schema": EvidenceConfig,
    "capture_schema": CaptureConfig,
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore and the ``${package_data:<file>}`` resolver
    (idempotent; call before ``@hydra.main``)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
    OmegaConf.register_new_resolver("package_data", package_data, replace=True)


def package_data(name: str) -> str:
    """The path of a data file the package ships (``websynthesis/data/<name>``), for configs
    whose default input is bundled (e.g. recorded MiniWoB++ transitions): a user's own file
    is an override away."""
    path = resources.files("websynthesis.data").joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"the package ships no data file {name!r} (websynthesis/data/)")
    return str(path)
