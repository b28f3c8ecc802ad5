"""The LightningModule: a causal LM with a trainable LoRA adapter, nothing else trainable.

* **Every forward passes ``use_cache=False``.** With a cache, transformers ignores the
  restarting ``position_ids`` of a packed batch and lets its sequences attend to each
  other under SDPA/eager, silently (see :mod:`~websynthesis.training.collate`).
* **Checkpoints hold the adapter and the optimizer only.** The frozen base (15 GB for a
  7B model) is never written; it is loaded from ``model.path`` again on resume, and a
  checkpoint whose tensors are not exactly this adapter's is refused.
* **Adapters leave as PEFT directories** (``adapter_config.json`` +
  ``adapter_model.safetensors``), which ``PeftModel.from_pretrained``, this package's
  ``LocalBackend(adapters=...)`` and vLLM's ``--lora-modules`` all load.
* **A resumed run is the uninterrupted one.** Before each training batch the global
  generator is seeded from ``(seed, rank, optimizer step, micro-batch)``, so LoRA dropout draws
  the same masks whether the run was killed or not: Lightning's checkpoints keep no random
  state, and a resumed process draws from the generator in other places (a new data loader,
  the adapter's load) before its first step.
* Gradient checkpointing is non-reentrant with input gradients enabled, so LoRA weights get
  gradients although every base weight is frozen. AdamW with warmup then cosine decay,
  stepped per optimizer step. Metrics are namespaced by stage (``bc/train/loss``,
  ``bc/val/loss``, ``bc/train/grad_norm``, ``bc/lr``); tokens/s is Lightning's
  ``ThroughputMonitor``'s ``train/device/items_per_sec`` (set up by the curriculum).
* **The stage's end loss is kept whatever the logger** (:attr:`LoraModule.end_train_loss`,
  written to ``done.json``): with ``logger=none`` it is the only record of whether a model
  fitted its data, the first question when a trained model does not do what it should.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import peft
import pytorch_lightning as pl
import torch
from peft import PeftModel
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from websynthesis.config import LoraConfig, OptimConfig
from websynthesis.training.tokenize import IGNORE_INDEX

# Training batches the end loss averages: enough to smooth one batch's draw of examples.
END_LOSS_BATCHES = 32


def attach_lora(
    base: PreTrainedModel,
    lora: LoraConfig,
    *,
    gradient_checkpointing: bool,
    adapter_dir: str | Path | None = None,
) -> PeftModel:
    """``base`` with a new LoRA adapter, or the trainable one saved in ``adapter_dir``."""
    base.config.use_cache = False
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    base.train()  # loaded in eval mode; checkpointing and LoRA dropout act only in training
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    return peft.get_peft_model(base, config)


class LoraModule(pl.LightningModule):
    """Trains ``model``'s active adapter for one curriculum stage.

    Args:
        model: a PeftModel whose adapter is trainable (from :func:`attach_lora`).
        optim: AdamW and schedule settings.
        total_steps: optimizer steps of the stage, the length of the cosine schedule (given,
            not Lightning's estimate: estimating loads the train loader before a resume can
            restore its position).
        lr: this stage's peak learning rate (``None``: ``optim.lr``).
        stage: the stage name, the namespace of every logged metric.
        seed: the run's seed, the root of each batch's dropout seed.
    """

    # ThroughputMonitor reads this; the FLOPs of LoRA training are estimated in bench/ instead.
    flops_per_batch = None

    def __init__(
        self,
        model: PeftModel,
        optim: OptimConfig,
        *,
        total_steps: int,
        lr: float | None = None,
        stage: str = "train",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model, self.optim, self.stage, self.seed = model, optim, stage, seed
        self.total_steps = total_steps
        self.lr = optim.lr if lr is None else lr
        self.strict_loading = False  # checkpoints lack the base; on_load_checkpoint checks keys
        self.adapter_keys = frozenset(n for n, p in self.named_parameters() if p.requires_grad)
        self.start_step = 0
        self.recent_losses: deque[torch.Tensor] = deque(maxlen=END_LOSS_BATCHES)
        if not self.adapter_keys:
            raise ValueError("the model has no trainable parameters: attach an adapter first")

    def on_train_start(self) -> None:
        self.start_step = self.global_step  # after a resume: the checkpoint's step

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The optimizer step (a checkpoint's own) and the micro-batch within it: checkpoints
        # fall between optimizer steps, so a resume restarts at micro-batch 0 of its step.
        micro = batch_idx % self.trainer.accumulate_grad_batches
        key = f"{self.seed}/{self.global_rank}/{self.global_step}/{micro}"
        digest = hashlib.sha256(key.encode()).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "big"))

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch, use_cache=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.log(f"{self.stage}/train/loss", loss, prog_bar=True)
        self.recent_losses.append(loss.detach())  # kept on the device: no sync per step
        return loss

    @property
    def end_train_loss(self) -> float | None:
        """The mean training loss of this process's last ``END_LOSS_BATCHES`` batches (each
        batch's per-token mean), ``None`` before any."""
        if not self.recent_losses:
            return None
        return float(torch.stack(list(self.recent_losses)).float().mean())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Weighted by target tokens, so the epoch value is the per-token mean loss.
        targets = int((batch["labels"] != IGNORE_INDEX).sum())
        loss = self(**batch).loss
        self.log(f"{self.stage}/val/loss", loss, batch_size=targets, sync_dist=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.log(f"{self.stage}/train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.lr,
            betas=(self.optim.betas[0], self.optim.betas[1]),
            eps=self.optim.eps,
            weight_decay=self.optim.weight_decay,
        )
        warmup = self.optim.warmup_steps
        if warmup is None:
            warmup = math.ceil(self.optim.warmup_ratio * self.total_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "step",
                "name": f"{self.stage}/lr",
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in self.adapter_keys}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = set(checkpoint["state_dict"])
        if keys != self.adapter_keys:
            raise ValueError(
                f"the checkpoint holds {len(keys)} tensors, not the {len(self.adapter_keys)} of "
                "this adapter: was it written with other lora settings or another base model?"
            )

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the adapter in PEFT format; the directory is replaced whole, never half-written."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in directory.parent.glob(f".{directory.name}.*"):  # a killed save's
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.model.save_pretrained(staging)
            publish_dir(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory


def publish_dir(staging: Path, directory: Path) -> None:
    """Move a finished ``staging`` directory to ``directory``, replacing any old one.

    Two renames on one filesystem: a reader sees the old directory, the new one, or (after a
    crash between the renames) none, with both kept aside; never a mix of their files.
    """
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the adapter from a server run as another user
    for path in staging.iterdir():
        path.chmod(0o644)
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
