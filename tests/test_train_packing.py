"""Padding-free packing is exact, and token-budget batches are planned, sharded and resumed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from websynthesis.backends.loading import load_model
from websynthesis.config import LoraConfig, OptimConfig
from websynthesis.training.collate import (
    ResumableDataLoader,
    TokenBudgetBatchSampler,
    pack_collate,
    pad_collate,
    plan_batches,
)
from websynthesis.training.module import LoraModule, attach_lora
from websynthesis.training.tokenize import IGNORE_INDEX

PAD = 0
# Packed and separate forwards are compared in float64: in float32 the two take different
# kernels (one long sequence against several short ones, chosen per CPU: AVX2, AVX-512, AMX)
# whose rounding differs by ~1e-5, so a float32 bound there is a bound on the kernel, not on
# packing. In float64 any correct kernel agrees to ~1e-12, while a real leak between packed
# sequences moves logits by ~1e-3 or more (test_with_a_cache_packed_sequences_leak_into_each_
# other): EXACT sits six orders of magnitude under the leak and three over float64 rounding.
EXACT = 1e-9


def features(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    rows = []
    for length in lengths:
        ids = [rng.randrange(3, 4000) for _ in range(length)]
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@pytest.fixture(scope="module")
def model(tiny_model_path: Path):
    return load_model(str(tiny_model_path), attn_implementation="sdpa", device="cpu").double()


def test_packed_batch_layout() -> None:
    batch = pack_collate()(features([3, 2, 4]))
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["input_ids"].shape == (1, 9)
    starts = batch["position_ids"][0] == 0
    assert (batch["labels"][0][starts] == IGNORE_INDEX).all()


def test_padded_batch_layout() -> None:
    rows = features([3, 5])
    batch = pad_collate(PAD)(rows)
    assert batch["input_ids"].tolist()[0] == rows[0]["input_ids"] + [PAD, PAD]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist()[0][3:] == [IGNORE_INDEX] * 2


def test_packed_logits_equal_separate_sequences(model) -> None:
    assert model.config._attn_implementation == "sdpa"
    rows = features([7, 12, 5, 9])
    packed = pack_collate()(rows)
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits
        alone = [
            model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits[0] for r in rows
        ]
        padded = pad_collate(PAD)(rows)
        padded_logits = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False
        ).logits
    assert logits.dtype == torch.float64
    assert (logits[0] - torch.cat(alone)).abs().max() < EXACT
    for row, (single, length) in enumerate(zip(alone, [7, 12, 5, 9], strict=True)):
        assert (padded_logits[row, :length] - single).abs().max() < EXACT


def test_with_a_cache_packed_sequences_leak_into_each_other(model) -> None:
    """Why every forward passes use_cache=False: the equality above is not vacuous."""
    rows = features([7, 12])
    packed = pack_collate()(rows)
    with torch.no_grad():
        leaky = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        second = model(input_ids=torch.tensor([rows[1]["input_ids"]]), use_cache=False).logits
    assert model.config.use_cache
    assert (leaky[0, 7:] - second[0]).abs().max() > 1e-3


def test_the_module_forward_packs_exactly_even_if_the_config_caches(tiny_model_path) -> None:
    base = load_model(str(tiny_model_path), attn_implementation="sdpa", device="cpu")
    peft_model = attach_lora(base, LoraConfig(dropout=0.0), gradient_checkpointing=False).double()
    base.config.use_cache = True
    module = LoraModule(peft_model, OptimConfig(), total_steps=1).eval()
    rows = features([6, 10])
    packed = pack_collate()(rows)
    with torch.no_grad():
        logits = module(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        alone = [module(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows]
    assert logits.dtype == torch.float64
    assert (logits[0] - torch.cat(alone)).abs().max() < EXACT


@pytest.mark.parametrize("packing", [True, False])
def test_batches_respect_the_budget_and_cover_every_example(packing: bool) -> None:
    rng = random.Random(1)
    lengths = [rng.randint(20, 400) for _ in range(300)]
    batches = plan_batches(lengths, 1024, packing=packing, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    for batch in batches:
        cost = (
            sum(lengths[i] for i in batch)
            if packing
            else len(batch) * max(lengths[i] for i in batch)
        )
        assert cost <= 1024
    assert batches == plan_batches(lengths, 1024, packing=packing, seed=3)
    assert batches != plan_batches(lengths, 1024, packing=packing, seed=4)


def test_length_grouping_wastes_little_padding() -> None:
    rng = random.Random(2)
    lengths = [rng.randint(20, 1000) for _ in range(2000)]
    grouped = plan_batches(lengths, 4096, packing=False, seed=0)
    used = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in grouped)
    assert used / padded > 0.9
    with pytest.raises(ValueError, match="exceeds batch_tokens"):
        plan_batches([10, 5000], 4096, packing=True, seed=0)


def test_ranks_get_equal_disjoint_shares_and_epochs_reorder() -> None:
    batches = [[i] for i in range(7)]
    shares = [
        list(TokenBudgetBatchSampler(batches, shuffle=True, seed=0, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 4
    seen = [b[0] for share in shares for b in share]
    assert set(seen) == set(range(7)) and len(seen) == 8  # one batch repeated to even out
    sampler = TokenBudgetBatchSampler(batches, shuffle=True, seed=0)
    first = list(sampler)
    sampler.resume(1, 0)
    assert sorted(first) == sorted(list(sampler)) and first != list(sampler)


def test_loader_resumes_mid_epoch_and_counts_its_epochs() -> None:
    rows = features([5] * 6)

    def loader() -> ResumableDataLoader:
        sampler = TokenBudgetBatchSampler([[i] for i in range(6)], shuffle=True, seed=0)
        return ResumableDataLoader(rows, batch_sampler=sampler, collate_fn=pack_collate())

    def ids(batch) -> int:
        return int(batch["input_ids"].sum())

    straight = loader()
    epochs = [[ids(b) for b in straight] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]

    interrupted = loader()
    head = []
    for batch in interrupted:
        head.append(ids(batch))
        if len(head) == 4:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "served": 4}
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [ids(b) for b in resumed] == epochs[0]
    assert [ids(b) for b in resumed] == epochs[1]
    at_end = loader()
    at_end.load_state_dict({"epoch": 0, "served": 6})
    assert [ids(b) for b in at_end] == epochs[1]
