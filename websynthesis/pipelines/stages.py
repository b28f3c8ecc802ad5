"""A run dir of named stages, each a job of the project's pipelines, resumable after a kill.

Why one home for this: the co-evolution rounds and the learning evidence are both long
chains of real jobs (train.py, synthesize.py, evaluate.py composed from their own configs
with a stage's overrides, each writing in its own folder). ``state.json`` records every
finished stage atomically, so a run started again on the same dir skips what is done and
reruns the stage it was in, which resumes from its own files (trees, checkpoints, episodes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from websynthesis.io import atomic_write_json

log = logging.getLogger(__name__)


class StagedRun:
    """Stages of one run dir (``out``); ``common`` overrides go to every job it composes."""

    def __init__(self, out: Path, common: Sequence[str], seed: int, prefix: str = "") -> None:
        self.out = out
        self.common = list(common)
        self.seed = seed
        self.prefix = prefix  # of the jobs' task names: <prefix>_<parent dir>_<stage>
        self.state_path = out / "state.json"
        state = read_json(self.state_path, {"done": []})
        self.done: list[str] = state["done"]
        # Wall seconds of each finished stage, over the sessions that worked on it: a session
        # that failed in it is kept under "open" and added when the stage finishes (only a
        # SIGKILL's time is lost).
        self.seconds: dict[str, float] = state.get("seconds", {})
        self._open: dict[str, float] = state.get("open", {})

    def stage(self, name: str, run: Callable[[Path], Any]) -> None:
        """Run ``run(<out>/<name>)`` unless ``name`` is recorded as done; then record it."""
        if name in self.done:
            return
        log.info("stage: %s", name)
        started = time.monotonic()
        try:
            run(self.out / name)
        except BaseException:
            self._open[name] = round(self._open.get(name, 0.0) + time.monotonic() - started, 1)
            self._write()
            raise
        spent = self._open.pop(name, 0.0) + time.monotonic() - started
        self.seconds[name] = round(spent, 1)
        self.done.append(name)
        self._write()

    def _write(self) -> None:
        state: dict[str, Any] = {"done": self.done, "seconds": self.seconds}
        if self._open:
            state["open"] = self._open  # failed sessions of unfinished stages, added on finish
        atomic_write_json(self.state_path, state)

    def job(
        self, config_name: str, out: Path, overrides: Sequence[str], seed: int | None = None
    ) -> DictConfig:
        """``config_name``'s composition with the common and the stage's overrides, writing
        into ``out`` (created)."""
        cfg = compose(
            config_name=config_name,
            overrides=[
                *self.common,
                *overrides,
                f"paths.output_dir={out}",
                f"seed={self.seed if seed is None else seed}",
                f"task_name={'_'.join(p for p in (self.prefix, out.parent.name, out.name) if p)}",
            ],
        )
        out.mkdir(parents=True, exist_ok=True)
        return cfg


def check_split(cfg: Any) -> None:
    """``tasks`` named, and ``train_seeds`` and ``eval_seeds`` both listed and disjoint:
    a held-out seed that is also trained on measures memorisation."""
    train, held_out = set(cfg.train_seeds), set(cfg.eval_seeds)
    if not train or not held_out:
        raise ValueError("train_seeds and eval_seeds must both list seeds")
    if train & held_out:
        raise ValueError(f"seeds {sorted(train & held_out)} are both training and held-out")
    if not cfg.tasks:
        raise ValueError("tasks must name the environment's tasks")


def read_json(path: Path, default: Any) -> Any:
    """``path``'s JSON, or ``default`` when there is no such file."""
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))
