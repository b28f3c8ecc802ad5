"""Experiment tracking: Lightning loggers from the ``logger`` config group.

W&B runs online only when a key is configured (``WANDB_API_KEY`` or a
``wandb login`` entry in ``~/.netrc``) and offline otherwise, so a fresh
machine never blocks on a login prompt; offline runs sync later with
``wandb sync``. The config sent to a logger is the resolved job config, which
holds no secrets by construction (keys are read from environment variables
whose names are configured).
"""

from __future__ import annotations

import netrc
import os
from typing import Any

import hydra
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
        if conf.get("_target_", "").endswith("WandbLogger") and conf.get("offline") is None:
            overrides["offline"] = not wandb_key_configured()
        loggers.append(hydra.utils.instantiate(conf, **overrides))
    return loggers


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
