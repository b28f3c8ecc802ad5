"""One stage's examples as Lightning dataloaders: split, scaled, tokenized, batched.

Order matters for the paper's ablations: the validation split is drawn first from all
of the stage's examples, then ``scale`` subsamples what is left for training. So every
data scale is validated on the same examples, and a smaller scale's training set is a
subset of a larger one's (same seed). Examples that carry ``meta["task_id"]`` are split
by task, so steps of one trajectory never land on both sides.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.data.chat import ChatExample
from websynthesis.training.collate import (
    ResumableDataLoader,
    TokenBudgetBatchSampler,
    as_features,
    pack_collate,
    pad_collate,
    plan_batches,
)
from websynthesis.training.tokenize import Tokenized, TokenizeStats, tokenize_examples


def canonical_order(examples: Sequence[ChatExample]) -> list[ChatExample]:
    """``examples`` in an order fixed by their content alone.

    Why: synthesis and evaluation append trajectories as trees and episodes finish, so two
    runs over the same data write it in different orders; sorting by a digest of each
    example makes the split, the batches and hence the trained adapter depend on the data
    and the seed only.
    """

    def digest(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # What is trained on first; metadata (task ids for the split) breaks ties.
    return sorted(examples, key=lambda e: (digest(e.messages), digest(e.meta)))


def split_examples(
    examples: Sequence[ChatExample], val_fraction: float, seed: int
) -> tuple[list[ChatExample], list[ChatExample]]:
    """Seeded (train, validation) split by task; at least one validation example when asked."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[str(example.meta.get("task_id", f"#{index}"))].append(index)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    wanted = max(1, round(len(examples) * val_fraction)) if val_fraction > 0 else 0
    val: set[int] = set()
    for key in keys[:-1]:  # the last group always trains
        if len(val) >= wanted:
            break
        val.update(groups[key])
    train = [e for i, e in enumerate(examples) if i not in val]
    return train, [e for i, e in enumerate(examples) if i in val]


def subsample(examples: Sequence[ChatExample], scale: float, seed: int) -> list[ChatExample]:
    """A seeded ``scale`` fraction, as a prefix of one fixed shuffle (so scales nest)."""
    if not 0 < scale <= 1:
        raise ValueError(f"data.scale must be in (0, 1], got {scale}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[: max(1, round(scale * len(examples)))])
    return [examples[i] for i in keep]


class ChatDataModule(pl.LightningDataModule):
    """Train and validation loaders over one stage's chat examples.

    Training batches come from :class:`TokenBudgetBatchSampler` through a
    :class:`ResumableDataLoader`, sharded by the trainer's rank, so a restarted run
    continues mid-epoch; validation batches are planned in length order, unshuffled.
    """

    def __init__(
        self,
        examples: Sequence[ChatExample],
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        batch_tokens: int,
        packing: bool = True,
        val_fraction: float = 0.05,
        scale: float = 1.0,
        seed: int = 0,
        mask_history: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_tokens < max_length:
            raise ValueError(f"batch_tokens={batch_tokens} is below max_length={max_length}")
        self.examples, self.tokenizer = examples, tokenizer
        self.max_length, self.batch_tokens, self.packing = max_length, batch_tokens, packing
        self.val_fraction, self.scale, self.seed = val_fraction, scale, seed
        self.mask_history, self.num_workers = mask_history, num_workers
        self.collate = pack_collate() if packing else pad_collate(tokenizer.pad_token_id)
        self.train_set: list[Tokenized] | None = None
        self.train_batches: list[list[int]] = []
        self.val_set: list[Tokenized] = []
        self.stats: dict[str, TokenizeStats] = {}

    def setup(self, stage: str | None = None) -> None:
        """Split, scale and tokenize once (idempotent: the curriculum calls it early)."""
        if self.train_set is not None:
            return
        examples = canonical_order(self.examples)
        train, val = split_examples(examples, self.val_fraction, self.seed)
        train = subsample(train, self.scale, self.seed)
        options: dict[str, Any] = {"max_length": self.max_length, "mask_history": self.mask_history}
        self.train_set, self.stats["train"] = tokenize_examples(self.tokenizer, train, **options)
        self.val_set, self.stats["val"] = tokenize_examples(self.tokenizer, val, **options)
        if not self.train_set:
            raise ValueError(f"no training example left: {self.stats['train'].to_dict()}")
        lengths = [len(s) for s in self.train_set]
        self.train_batches = plan_batches(
            lengths, self.batch_tokens, packing=self.packing, seed=self.seed
        )

    def batches_per_epoch(self, world_size: int) -> int:
        """Training batches each rank sees per epoch."""
        return -(-len(self.train_batches) // world_size)

    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_set is not None, "setup() first"
        sampler = TokenBudgetBatchSampler(
            self.train_batches, shuffle=True, seed=self.seed, **self._shard()
        )
        return ResumableDataLoader(
            as_features(self.train_set),
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.val_set:
            return []
        lengths = [len(s) for s in self.val_set]
        batches = plan_batches(lengths, self.batch_tokens, packing=self.packing, seed=None)
        sampler = TokenBudgetBatchSampler(batches, shuffle=False, **self._shard())
        return DataLoader(
            as_features(self.val_set),
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def _shard(self) -> dict[str, int]:
        if self.trainer is None:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}
