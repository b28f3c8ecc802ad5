"""train.py's job: chat-format trajectories in, a LoRA adapter out.

This build runs the stage training starts with: read and validate every
dataset named under ``data.train_files`` (``name: path`` of chat-format
JSONL), so a bad row fails before any model is loaded, and report the mix each
curriculum stage will train on. The Lightning/PEFT trainer itself is not part
of this build: the job says so and stops after validation.
"""

from __future__ import annotations

import logging
from collections import Counter

from omegaconf import DictConfig

from websynthesis.data.chat import read_chat_jsonl
from websynthesis.io import atomic_write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, int]:
    """Validate the training data of every curriculum stage; returns examples per dataset."""
    counts = Counter({name: sum(1 for _ in read_chat_jsonl(path))
                      for name, path in cfg.data.train_files.items()})
    for stage in cfg.curriculum.stages:
        missing = [name for name in stage.data if name not in counts]
        log.info("stage %s: %s%s", stage.name,
                 {name: counts.get(name, 0) for name in stage.data},
                 f" (no file configured for {missing})" if missing else "")
    atomic_write_json(f"{cfg.paths.output_dir}/data_summary.json", dict(counts))
    log.warning("LoRA training is not in this build; the data above was validated only")
    return dict(counts)
