"""Experiment tracking: Lightning loggers from the ``logger`` config group.

W&B runs online only when a key is configured (``WANDB_API_KEY`` or a
``wandb login`` entry in ``~/.netrc``) and offline otherwise, so a fresh
machine never blocks on a login prompt; offline runs sync later with
``wandb sync``. In a multirun each job's W&B run is named after its sweep
job number (``train-0``, ``train-1``...), as its run directory is. The config
sent to a logger is the resolved job config, which holds no secrets by
construction (keys are read from environment variables whose names are
configured).
"""

from __future__ import annotations

import netrc
import os
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger


def wandb_key_configured() -> bool:
    """Whether W&B can authenticate without asking."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Build every logger in the group; W&B's ``offline: null`` means "offline without a key"."""
    loggers: list[Logger] = []
    for name, conf in (logger_cfg or {}).items():
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ValueError(f"logger.{name} needs a _target_")
        overrides: dict[str, Any] = {}
        if conf.get("_target_", "").endswith("WandbLogger"):
            if conf.get("offline") is None:
                overrides["offline"] = not wandb_key_configured()
            if (job := _sweep_job_number()) is not None:
                overrides["name"] = f"{conf.get('name') or 'run'}-{job}"
        loggers.append(hydra.utils.instantiate(conf, **overrides))
    return loggers


def _sweep_job_number() -> int | None:
    """This job's number in a Hydra multirun (its sweep subdirectory), else ``None``.

    Why: every job of a sweep composes the same ``name``; W&B would list them all
    under one name, told apart only by their configs.
    """
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None


def log_job_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Send the resolved config (without Hydra's own node) to every logger."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for logger in loggers:
        logger.log_hyperparams(container)


def finish(loggers: list[Logger]) -> None:
    """Close the loggers so multirun jobs get one W&B run each."""
    for logger in loggers:
        logger.finalize("success")
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
