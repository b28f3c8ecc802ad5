"""evaluate.py's job: an agent in a live environment in, success and pass@k out.

This build checks what an evaluation needs before a browser starts: the
environment config and the tasks. The agent loop and the evaluators are not
part of this build: the job says so and stops after the checks.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, int]:
    """Check the environment config; returns how many tasks it names."""
    if not cfg.env.tasks:
        raise ValueError(f"env={cfg.env.name} names no tasks: set env.tasks=[...]")
    log.info("environment %s, tasks %s", cfg.env.name, list(cfg.env.tasks))
    log.warning("the agent loop is not in this build; the configuration was checked only")
    return {"tasks": len(cfg.env.tasks)}
