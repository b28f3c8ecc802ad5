"""Run a curriculum's stages in one process, the adapter carried from stage to stage.

Each stage is its own Lightning ``Trainer.fit`` on its own data mix, with its own step or
epoch budget and learning rate. Everything a stage leaves is under
``<run dir>/stages/<n>-<name>/``:

* ``checkpoints/last.ckpt``: adapter + optimizer + loop state, every
  ``checkpoint_every_n_steps`` (written atomically next to itself,
  :mod:`~websynthesis.training.checkpoint_io`);
* ``adapter/``: the adapter at the stage's end, in PEFT format;
* ``done.json``: written atomically last, so its presence means the stage is finished.

**Resume.** Restarted on the same run dir, finished stages are skipped (the next one
starts from the last finished stage's adapter) and an unfinished stage continues from
``ckpt_path`` or its own ``last.ckpt``: same global step, same optimizer moments and
schedule, and the next batch of the interrupted epoch. A ``done.json`` written with other
stage settings stops the run instead of silently mixing two experiments. The final
adapter is copied to ``<run dir>/adapter/`` (:func:`publish_adapter`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.config import LoraConfig, OptimConfig, StageConfig, TrainDataConfig
from websynthesis.data.chat import ChatExample
from websynthesis.io import atomic_write_json
from websynthesis.training.checkpoint_io import SameDirCheckpointIO
from websynthesis.training.datamodule import ChatDataModule
from websynthesis.training.module import LoraModule, attach_lora, publish_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """One stage of this run: its settings (caps applied) and where its outputs go."""

    index: int
    config: StageConfig
    directory: Path

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def marker(self) -> Path:
        return self.directory / "done.json"

    @property
    def adapter(self) -> Path:
        return self.directory / "adapter"

    @property
    def last_checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    def is_done(self) -> bool:
        """Whether ``done.json`` exists; raises when it records other stage settings."""
        if not self.marker.is_file():
            return False
        recorded = json.loads(self.marker.read_text(encoding="utf-8"))["stage"]
        if recorded != asdict(self.config):
            raise ValueError(
                f"{self.marker} records stage settings {recorded}, but this run asks for "
                f"{asdict(self.config)}: use a new hydra.run.dir"
            )
        return True


def plan_stages(
    run_dir: Path, stages: Sequence[StageConfig], trainer_cfg: DictConfig
) -> list[StageRun]:
    """The stages with ``trainer.max_steps``/``max_epochs`` applied as caps."""
    if len({stage.name for stage in stages}) != len(stages):
        raise ValueError(f"curriculum stage names must differ: {[s.name for s in stages]}")
    runs = []
    for index, stage in enumerate(stages):
        capped = StageConfig(
            name=stage.name,
            data=list(stage.data),
            max_steps=_cap(stage.max_steps, trainer_cfg.max_steps),
            max_epochs=_cap(stage.max_epochs, trainer_cfg.max_epochs),
            lr=stage.lr,
        )
        if capped.max_steps is None and capped.max_epochs is None:
            raise ValueError(f"stage {stage.name} sets neither max_steps nor max_epochs")
        runs.append(StageRun(index, capped, run_dir / "stages" / f"{index + 1}-{stage.name}"))
    return runs


def run_curriculum(
    runs: Sequence[StageRun],
    examples: Mapping[str, Sequence[ChatExample]],
    *,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DictConfig,
    loggers: Sequence[Logger] = (),
) -> dict[str, Any]:
    """Train every unfinished stage of ``runs`` on ``examples[stage name]``; returns the
    ``done.json`` record of each stage trained now. ``cfg`` is the train.py config."""
    lora: LoraConfig = OmegaConf.to_object(cfg.lora)
    optim: OptimConfig = OmegaConf.to_object(cfg.optim)
    data: TrainDataConfig = OmegaConf.to_object(cfg.data)
    model = None
    records: dict[str, Any] = {}
    explicit_ckpt = cfg.get("ckpt_path")
    for run in runs:
        if run.is_done():
            log.info("stage %s: done earlier, skipped", run.name)
            continue
        # A later stage continues the previous stage's adapter; the first one continues
        # init_adapter (a co-evolution round warm-starting from the last round) if set.
        previous = runs[run.index - 1].adapter if run.index > 0 else cfg.get("init_adapter")
        if model is None:
            model = attach_lora(
                base,
                lora,
                gradient_checkpointing=cfg.gradient_checkpointing,
                adapter_dir=previous,
            )
        datamodule = ChatDataModule(
            examples[run.name],
            tokenizer,
            max_length=data.max_length,
            batch_tokens=data.batch_tokens,
            packing=packs(base) if data.packing is None else data.packing,
            val_fraction=data.val_fraction,
            scale=data.scale,
            seed=cfg.seed,
            mask_history=data.mask_history,
            num_workers=data.num_workers,
        )
        datamodule.setup("fit")
        stats = {split: s.to_dict() for split, s in datamodule.stats.items()}
        log.info("stage %s: data %s, packing %s", run.name, stats, datamodule.packing)
        ckpt = explicit_ckpt or (
            str(run.last_checkpoint) if run.last_checkpoint.is_file() else None
        )
        explicit_ckpt = None  # ckpt_path= applies to the first unfinished stage only
        if ckpt:
            log.info("stage %s: resuming from %s", run.name, ckpt)
        trainer = _trainer(cfg, run, loggers)
        total = _total_steps(run.config, datamodule, trainer)
        module = LoraModule(
            model, optim, total_steps=total, lr=run.config.lr, stage=run.name, seed=cfg.seed
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        val = trainer.validate(module, datamodule=datamodule) if datamodule.val_set else [{}]
        record = {
            "stage": asdict(run.config),
            "global_step": trainer.global_step,
            "started_at_step": module.start_step,
            "resumed_from": ckpt,
            "started_from": None if previous is None else str(previous),
            "train_loss": module.end_train_loss,
            "val_loss": val[0].get(f"{run.name}/val/loss"),
            "packing": datamodule.packing,
            "data": stats,
        }
        if trainer.is_global_zero:
            module.save_adapter(run.adapter)
            atomic_write_json(run.marker, record)
        records[run.name] = record
    return records


def publish_adapter(runs: Sequence[StageRun], target: Path) -> None:
    """Copy the last stage's adapter to ``target`` (rank zero; the others have nothing to do)."""
    if pl.utilities.rank_zero_only.rank != 0:
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(runs[-1].adapter, staging, dirs_exist_ok=True)
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _trainer(cfg: DictConfig, run: StageRun, loggers: Sequence[Logger]) -> pl.Trainer:
    """The configured Trainer with this stage's budget, checkpoints and monitors."""
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=run.directory / "checkpoints",
            save_top_k=0,
            save_last=True,
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            enable_version_counter=False,
        ),
        ThroughputMonitor(batch_size_fn=_sequences, length_fn=_tokens, window_size=10),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    max_steps = run.config.max_steps
    return hydra.utils.instantiate(
        cfg.trainer,
        max_steps=-1 if max_steps is None else max_steps,
        max_epochs=run.config.max_epochs,
        callbacks=callbacks,
        logger=list(loggers) or False,
        default_root_dir=str(run.directory),
        plugins=[SameDirCheckpointIO()],
        use_distributed_sampler=False,  # the batch sampler shards by rank itself
    )


def packs(model: PreTrainedModel) -> bool:
    """Whether packing pays off: only a varlen kernel (flash-attention) skips the cross-sequence
    blocks of a packed row; SDPA and eager compute them, masked (bench/bench_train.py)."""
    return "flash" in str(model.config._attn_implementation)


def _total_steps(stage: StageConfig, datamodule: ChatDataModule, trainer: pl.Trainer) -> int:
    """Optimizer steps the stage will take: its step budget or its epochs, whichever ends first."""
    batches = datamodule.batches_per_epoch(trainer.world_size)
    per_epoch = -(-batches // trainer.accumulate_grad_batches)  # the last batch always steps
    budgets = [stage.max_steps, None if stage.max_epochs is None else per_epoch * stage.max_epochs]
    return min(b for b in budgets if b is not None)


def _cap(own: int | None, cap: int | None) -> int | None:
    """The smaller of a stage's budget and the trainer's cap (-1/None: no cap)."""
    if cap is None or cap < 0:
        return own
    return cap if own is None else min(own, cap)


def _sequences(batch: Mapping[str, torch.Tensor]) -> int:
    if "position_ids" in batch:
        return int((batch["position_ids"] == 0).sum())
    return int(batch["input_ids"].shape[0])


def _tokens(batch: Mapping[str, torch.Tensor]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
