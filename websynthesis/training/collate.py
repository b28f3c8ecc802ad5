"""Batches of tokenized examples: length-grouped under a token budget, packed or padded.

**Packing (padding-free).** A batch is one flattened row; ``position_ids`` restart at 0
for each sequence and there is no ``attention_mask``, from which transformers derives a
block-diagonal mask (flash-attention varlen, or SDPA/eager), so sequences never attend to
each other. That holds only with ``use_cache=False`` in the forward (with a cache
transformers ignores the packing), which :mod:`~websynthesis.training.module` always
passes. Labels are -100 at each sequence start, so no sequence's first token is predicted
from the one before it. :class:`transformers.DataCollatorWithFlattening` does exactly this.
Only a varlen kernel (flash-attention) skips the cross-sequence blocks; SDPA and eager
compute the dense masked row, which on the tiny model made packing 2-3x slower than
length-grouped padding (bench/bench_train.py), so ``data.packing: null`` packs only there.

**Padding** (:func:`pad_collate`) is kept for comparison and for kernels without packed
support: right padding, an attention mask, labels -100 on the pads.

**Batches** (:class:`TokenBudgetBatchSampler`) are planned once per run: examples are
shuffled, cut into large groups, sorted by length inside each group and filled greedily up
to ``max_tokens``, so a batch holds similar lengths (little padding, even packing cost).
Each epoch visits the same batches in a new seeded order. Under data parallelism each rank
takes every ``world_size``-th batch of the order (padded by wrapping around so all ranks
step equally often). The sampler resumes mid-epoch: :class:`ResumableDataLoader` reports
how many batches it has handed out, Lightning stores that in the checkpoint, and a restart
continues with the next batch instead of repeating the epoch's start.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithFlattening

from websynthesis.training.tokenize import IGNORE_INDEX, Tokenized

_GROUP_BATCHES = 64  # batches' worth of examples sorted together: more = less padding, less mixing


def plan_batches(
    lengths: Sequence[int], max_tokens: int, *, packing: bool, seed: int | None
) -> list[list[int]]:
    """Length-grouped batches of indices; ``seed=None`` keeps the input order (validation).

    Packed, a batch's cost is the sum of its lengths; padded, rows x its longest row.
    """
    if lengths and max(lengths) > max_tokens:
        raise ValueError(f"an example of {max(lengths)} tokens exceeds batch_tokens={max_tokens}")
    order = list(range(len(lengths)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    mean = max(1, sum(lengths) // max(1, len(lengths)))
    group = _GROUP_BATCHES * max(1, max_tokens // mean)
    batches: list[list[int]] = []
    for begin in range(0, len(order), group):
        batch: list[int] = []
        used = 0
        for index in sorted(order[begin : begin + group], key=lambda i: -lengths[i]):
            longest = lengths[batch[0]] if batch else lengths[index]  # sorted: the first
            cost = used + lengths[index] if packing else (len(batch) + 1) * longest
            if batch and cost > max_tokens:
                batches.append(batch)
                batch, used = [], 0
            batch.append(index)
            used += lengths[index]
        if batch:
            batches.append(batch)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """The planned batches in a seeded per-epoch order, this rank's share, from ``start``."""

    def __init__(
        self,
        batches: list[list[int]],
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.batches, self.shuffle, self.seed = batches, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def resume(self, epoch: int, start: int) -> None:
        """Continue ``epoch`` after its first ``start`` batches (on this rank)."""
        self.epoch, self.start = epoch, start

    def _mine(self) -> list[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        padded = -len(order) % self.num_replicas
        order += order[:padded]
        return [self.batches[i] for i in order[self.rank :: self.num_replicas]]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._mine()[self.start :]

    def __len__(self) -> int:
        return -(-len(self.batches) // self.num_replicas)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`TokenBudgetBatchSampler` that counts its own epochs and
    whose position in the epoch is saved in Lightning checkpoints.

    Each pass after the first is a new epoch (a new batch order); Lightning's ``set_epoch``
    does not reach a custom batch sampler. Lightning calls ``state_dict``/``load_state_dict``
    on dataloaders that have them; the count is of batches handed to the training loop, not
    of indices prefetched by workers.
    """

    batch_sampler: TokenBudgetBatchSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served, self._started = 0, False

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        if self._started:
            sampler.resume(sampler.epoch + 1, 0)
        self._started, self._served = True, sampler.start
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, served = state["epoch"], state["served"]
        if served >= len(self.batch_sampler):  # saved at the epoch's end: the next one starts
            epoch, served = epoch + 1, 0
        self.batch_sampler.resume(epoch, served)
        self._served, self._started = served, False


def pack_collate() -> DataCollatorWithFlattening:
    """Padding-free collator: one flattened row, restarting ``position_ids``, no mask."""
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


def pad_collate(pad_token_id: int) -> Any:
    """Right-padding collator with an attention mask (the comparison baseline)."""

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for feature in features:
            pad = width - len(feature["input_ids"])
            batch["input_ids"].append(feature["input_ids"] + [pad_token_id] * pad)
            batch["labels"].append(feature["labels"] + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append([1] * len(feature["input_ids"]) + [0] * pad)
        return {key: torch.tensor(value) for key, value in batch.items()}

    return collate


def as_features(sequences: Sequence[Tokenized]) -> list[dict[str, list[int]]]:
    """The dict rows both collators take."""
    return [{"input_ids": s.input_ids, "labels": s.labels} for s in sequences]
