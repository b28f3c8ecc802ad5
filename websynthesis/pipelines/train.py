"""train.py's job: chat-format examples in, a LoRA adapter out.

1. Seed, and plan the curriculum's stages under the run dir; stages finished by an
   earlier (killed) run on the same dir are skipped (see
   :mod:`websynthesis.training.curriculum` for the resume rules).
2. Build each unfinished stage's data before any model is loaded, so a bad row fails in
   seconds: the paper's mixes come from ``websynthesis.training.mixes.build_mix`` (given
   ``cfg.data``, the optional ``teacher`` backend and ``cfg.model`` for prompt settings;
   ``data.train_files.<mix>`` replaces a built mix), any other mix name is read from its
   ``data.train_files`` chat JSONL. What the builders kept and dropped (and why) goes to
   ``data_stats.json``.
3. Load the base model and tokenizer by the same path inference uses (``model.path``;
   ``tiny`` builds the test model), in bf16 when the trainer's precision is bf16.
4. Train the stages with the configured loggers (one W&B run per job, closed at its end,
   so multirun jobs never share one) and publish ``<run dir>/adapter/``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from websynthesis import tracking
from websynthesis.backends.loading import load_model, load_tokenizer, resolve_model_path
from websynthesis.config import StageConfig
from websynthesis.data.chat import ChatExample, read_chat_jsonl
from websynthesis.io import atomic_write_json
from websynthesis.training.curriculum import plan_stages, publish_adapter, run_curriculum
from websynthesis.training.mixes import MIX_NAMES, build_mix

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the curriculum; returns the ``done.json`` record of each stage trained now."""
    out = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    stages: list[StageConfig] = OmegaConf.to_object(cfg.curriculum).stages
    runs = plan_stages(out, stages, cfg.trainer)
    pending = [run for run in runs if not run.is_done()]
    records: dict[str, Any] = {}
    if pending:
        init = cfg.get("init_adapter")
        if init is not None and not (Path(init) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"init_adapter={init}: no PEFT adapter (adapter_config.json)")
        mixes = MixSource(cfg)
        examples = {run.name: mixes.stage(run.config) for run in pending}
        atomic_write_json(out / "data_stats.json", dict(sorted(mixes.counts.items())))
        path = resolve_model_path(str(cfg.model.path))
        tokenizer = load_tokenizer(path)
        base = load_model(path, dtype=base_dtype(cfg.trainer.precision), device="cpu")
        loggers = tracking.instantiate_loggers(cfg.get("logger"))
        tracking.log_job_config(loggers, cfg)
        try:
            records = run_curriculum(
                runs, examples, base=base, tokenizer=tokenizer, cfg=cfg, loggers=loggers
            )
        finally:
            tracking.finish(loggers)
    else:
        log.info("every stage in %s is done", out / "stages")
    publish_adapter(runs, out / "adapter")
    log.info("adapter: %s", out / "adapter")
    return records


class MixSource:
    """Examples of a named mix: the builders' mixes through ``build_mix`` (which also reads
    ``data.train_files`` and ``data.external``), any other name from ``data.train_files``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self._cache: dict[str, list[ChatExample]] = {}
        self._teacher: Any = None
        self.counts: Counter[str] = Counter()  # what the builders kept, dropped and why

    def stage(self, stage: StageConfig) -> list[ChatExample]:
        """A stage's examples: its mixes, concatenated in order."""
        if not stage.data:
            raise ValueError(f"stage {stage.name} names no data")
        examples = [example for name in stage.data for example in self.mix(name)]
        if not examples:
            raise ValueError(
                f"stage {stage.name} has no examples: its mixes {list(stage.data)} are empty "
                "(model-written mixes need teacher=<backend config>; see data_stats.json)"
            )
        return examples

    def mix(self, name: str) -> list[ChatExample]:
        if name not in self._cache:
            data = self.cfg.data
            if name in MIX_NAMES:
                built = build_mix(
                    name, data, self.teacher(), model_cfg=self.cfg.model, counts=self.counts
                )
            elif name in data.train_files:
                built = list(read_chat_jsonl(data.train_files[name]))
            else:
                raise ValueError(f"no data for mix {name!r}: set data.train_files.{name}=PATH")
            self._cache[name] = built
        return self._cache[name]

    def teacher(self) -> Any:
        """The ``teacher`` backend, built on first use (``None`` when not configured)."""
        if self._teacher is None and self.cfg.get("teacher") is not None:
            self._teacher = hydra.utils.instantiate(self.cfg.teacher)
        return self._teacher


def base_dtype(precision: Any) -> str:
    """The dtype to load the frozen base in: bf16/fp16 under those precisions, else fp32.

    With ``bf16-mixed`` the LoRA weights stay fp32 (PEFT upcasts adapters) and matmuls
    run in bf16, with no fp32 copy of the base.
    """
    text = str(precision)
    if text.startswith("bf16"):
        return "bfloat16"
    if text.startswith("16"):
        return "float16"
    return "float64" if text.startswith("64") else "float32"
