"""The LightningModule: adapter-only checkpoints, exact resume, adapters that load elsewhere."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from peft import PeftModel
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from websynthesis.backends.loading import load_model, load_tokenizer
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.types import GenerationRequest, Sampling, generate
from websynthesis.config import LoraConfig, OptimConfig
from websynthesis.data.chat import ChatExample
from websynthesis.training.datamodule import ChatDataModule
from websynthesis.training.module import LoraModule, attach_lora

EXAMPLES = [
    ChatExample(
        (
            {"role": "user", "content": f"OBSERVATION:\n[{i}] button 'item {i}'\n\nNext?"},
            {"role": "assistant", "content": f"In summary, the next action is ```click [{i}]```"},
        ),
        meta={"task_id": f"t{i // 2}"},
    )
    for i in range(16)
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path):
    return load_tokenizer(str(tiny_model_path))


def make_module(path: Path, *, total_steps: int, lora: LoraConfig | None = None, lr=None):
    base = load_model(str(path), device="cpu")
    torch.manual_seed(0)  # the same LoRA initialisation every time
    model = attach_lora(base, lora or LoraConfig(dropout=0.0), gradient_checkpointing=True)
    return LoraModule(model, OptimConfig(warmup_steps=2), total_steps=total_steps, lr=lr, stage="s")


def fit(module, tokenizer, tmp: Path, max_steps: int, *, ckpt=None, callbacks=(), logger=False):
    pl.seed_everything(0)
    data = ChatDataModule(
        EXAMPLES, tokenizer, max_length=128, batch_tokens=256, val_fraction=0.2, seed=0
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=20,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[
            ModelCheckpoint(
                dirpath=tmp,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=1,
                enable_version_counter=False,
            ),
            *callbacks,
        ],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return trainer


def adapter_state(module: LoraModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "lora_" in k}


class Batches(pl.Callback):
    def __init__(self) -> None:
        self.sums: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sums.append(int(batch["input_ids"].sum()))


def test_checkpoint_holds_the_adapter_and_optimizer_only(tiny_model_path, tokenizer, tmp_path):
    module = make_module(tiny_model_path, total_steps=2)
    fit(module, tokenizer, tmp_path, 2)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys == module.adapter_keys and all("lora_" in key for key in keys)
    assert checkpoint["optimizer_states"] and checkpoint["global_step"] == 2
    adapter_bytes = sum(v.numel() * v.element_size() for v in checkpoint["state_dict"].values())
    base_bytes = sum(
        p.numel() * p.element_size() for p in module.model.get_base_model().parameters()
    )
    # adapter + two Adam moments + bookkeeping; the base alone is several times larger
    assert (tmp_path / "last.ckpt").stat().st_size < 3 * adapter_bytes + 200_000 < base_bytes


def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_model_path, tokenizer, tmp_path):
    straight, seen = make_module(tiny_model_path, total_steps=9), Batches()
    fit(straight, tokenizer, tmp_path / "straight", 9, callbacks=[seen])
    # 7 batches per epoch: stop inside epoch 1, restart from last.ckpt
    first, first_seen = make_module(tiny_model_path, total_steps=9), Batches()
    fit(first, tokenizer, tmp_path / "cut", 5, callbacks=[first_seen])
    second, second_seen = make_module(tiny_model_path, total_steps=9), Batches()
    trainer = fit(
        second,
        tokenizer,
        tmp_path / "cut",
        9,
        ckpt=tmp_path / "cut" / "last.ckpt",
        callbacks=[second_seen],
    )
    assert second.start_step == 5 and trainer.global_step == 9
    assert first_seen.sums + second_seen.sums == seen.sums  # no batch repeated or skipped
    resumed, uninterrupted = adapter_state(second), adapter_state(straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_training_moves_only_lora_weights_and_logs_its_metrics(
    tiny_model_path, tokenizer, tmp_path
):
    module = make_module(tiny_model_path, total_steps=6)
    base_before = {k: v.clone() for k, v in module.model.get_base_model().state_dict().items()}
    assert all(
        torch.count_nonzero(v) == 0 for k, v in adapter_state(module).items() if "lora_B" in k
    )
    logger = CSVLogger(tmp_path, name="csv")
    fit(module, tokenizer, tmp_path / "ckpt", 6, logger=logger, callbacks=[LearningRateMonitor()])
    assert module.model.get_base_model().is_gradient_checkpointing
    lora_b = [v for k, v in adapter_state(module).items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) > 0 for v in lora_b)
    for key, value in module.model.get_base_model().state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_before[key]), key
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"s/train/loss", "s/train/grad_norm", "s/lr", "s/val/loss"} <= columns
    lrs = [float(r["s/lr"]) for r in rows if r.get("s/lr")]
    assert lrs[:3] == pytest.approx([0.0, 1e-4, 2e-4])  # warmup over 2 steps to the peak,
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0  # then cosine decay


def test_adapter_saves_in_peft_format_and_loads_elsewhere(tiny_model_path, tokenizer, tmp_path):
    module = make_module(tiny_model_path, total_steps=4, lr=5e-2)
    fit(module, tokenizer, tmp_path / "ckpt", 4)
    directory = module.save_adapter(tmp_path / "adapter")
    assert {p.name for p in directory.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    ids = torch.tensor(
        [tokenizer.apply_chat_template([{"role": "user", "content": "Next?"}])["input_ids"]]
    )
    fresh = load_model(str(tiny_model_path), dtype="float64", device="cpu")
    with torch.no_grad():  # float64 both: the bound is on the saved weights, not on kernels
        base_logits = fresh(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(fresh, str(directory)).eval()
        adapted = loaded(input_ids=ids).logits
        trained = copy.deepcopy(module.model).double().eval()(input_ids=ids, use_cache=False).logits
    assert adapted.dtype == trained.dtype == torch.float64
    assert (adapted - trained).abs().max() < 1e-9
    assert (adapted - base_logits).abs().max() > 1e-2
    backend = LocalBackend(str(tiny_model_path), adapters={"policy": str(directory)}, device="cpu")
    request = GenerationRequest(({"role": "user", "content": "Next?"},), Sampling(max_new_tokens=4))
    answers = generate(
        backend, [request, GenerationRequest(request.messages, request.sampling, "policy")]
    )
    assert all(answer.ok for answer in answers)


def test_a_checkpoint_of_another_adapter_is_refused(tiny_model_path, tokenizer, tmp_path):
    fit(make_module(tiny_model_path, total_steps=1), tokenizer, tmp_path, 1)
    other = make_module(tiny_model_path, total_steps=2, lora=LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"not the .* of this adapter"):
        fit(other, tokenizer, tmp_path, 2, ckpt=tmp_path / "last.ckpt")


def test_the_order_data_arrives_in_changes_nothing(tokenizer) -> None:
    """Synthesis appends trees as they finish: the same examples in another order must give
    the same split and the same batches (hence the same adapter)."""
    shuffled = EXAMPLES[::-1][8:] + EXAMPLES[::-1][:8]
    loaded = []
    for examples in (EXAMPLES, shuffled):
        data = ChatDataModule(
            examples, tokenizer, max_length=128, batch_tokens=256, val_fraction=0.2, seed=0
        )
        data.setup()
        loaded.append(data)
    first, second = loaded
    assert first.train_batches == second.train_batches
    assert [s.input_ids for s in first.val_set] == [s.input_ids for s in second.val_set]
    for a, b in zip(first.train_set or [], second.train_set or [], strict=True):
        assert a.input_ids == b.input_ids and a.labels == b.labels
