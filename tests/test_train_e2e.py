"""train.py end to end, as a user runs it: subprocesses, real Hydra, the tiny model."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from safetensors.torch import load_file

from websynthesis.config import StageConfig, register_configs
from websynthesis.pipelines.train import MixSource

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789abcdef"
MIXES = ("dense_caption", "element_function", "state_transition", "valuable", "rollback")
FAST = (
    "data.batch_tokens=512",
    "data.max_length=512",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> tuple[str, ...]:
    """``+data.train_files.<mix>=<file>`` overrides for five small chat JSONL files."""
    folder, rng, overrides = tmp_path_factory.mktemp("data"), random.Random(0), []
    for mix in MIXES:
        rows = []
        for i in range(12):
            page = "\n".join(f"\t[{j}] link 'item {rng.randint(0, 999)}'" for j in range(3, 30))
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are a web agent."},
                        {
                            "role": "user",
                            "content": f"OBJECTIVE:\nfind {i}\n\nOBSERVATION:\n{page}",
                        },
                        {"role": "assistant", "content": f"Let's think. ```click [{i + 3}]```"},
                    ],
                    "meta": {"task_id": f"{mix}-{i // 2}"},
                }
            )
        (folder / f"{mix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        overrides.append(f"+data.train_files.{mix}={folder / mix}.jsonl")
    return tuple(overrides)


def command(*overrides: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), *overrides]


def environment() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": SECRET, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def train(*overrides: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(*overrides),
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def assert_no_secret(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


@pytest.mark.slow
def test_textui_warmup_writes_a_peft_adapter(data, tmp_path: Path) -> None:
    train(
        "+experiment=textui_warmup",
        "model=tiny",
        "trainer.max_steps=12",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        *FAST,
        *data[:3],
        f"hydra.run.dir={tmp_path}",
    )
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "adapter" / name).is_file()
    done = json.loads((tmp_path / "stages" / "1-textui" / "done.json").read_text())
    assert done["global_step"] == 12 and done["val_loss"] > 0
    assert 0 < done["train_loss"] < 20  # the last batches' mean, recorded without a logger too
    assert done["packing"] is False  # auto: SDPA on CPU pads
    assert done["data"]["train"]["kept"] + done["data"]["val"]["kept"] == 36
    with open(next(tmp_path.glob("csv/version_*/metrics.csv"))) as handle:
        columns = set(next(csv.reader(handle)))
    assert {
        "textui/train/loss",
        "textui/val/loss",
        "textui/lr",
        "textui/train/grad_norm",
    } <= columns
    assert "train/device/items_per_sec" in columns  # tokens/s, from ThroughputMonitor
    assert_no_secret(tmp_path)


@pytest.mark.slow
def test_the_design_cards_command_runs_on_the_data_the_package_ships(tmp_path: Path) -> None:
    """``python train.py +experiment=textui_warmup model=tiny``, as written: no data given,
    the bundled MiniWoB++ recording is the warm-up's state-transition pages."""
    train(
        "+experiment=textui_warmup", "model=tiny", "trainer.max_steps=3", "logger=none",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    stats = json.loads((tmp_path / "stages" / "1-textui" / "done.json").read_text())["data"]
    assert stats["train"]["kept"] + stats["val"]["kept"] > 0


@pytest.mark.slow
def test_websynthesis_carries_the_adapter_into_stage_two(data, tmp_path: Path) -> None:
    # With lr 0 stage 2 cannot move its weights: it ends where it started, i.e. at stage 1's.
    train(
        "+experiment=websynthesis",
        "logger=none",
        "trainer.max_steps=3",
        "data.packing=true",
        "curriculum.stages.1.lr=0",
        *FAST,
        *data,
        f"hydra.run.dir={tmp_path}",
    )
    first = adapter(tmp_path / "stages" / "1-textui" / "adapter")
    second = adapter(tmp_path / "stages" / "2-bc" / "adapter")
    final = adapter(tmp_path / "adapter")
    assert any(torch.count_nonzero(v) for k, v in first.items() if "lora_B" in k)  # trained
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], final[k]) for k in first)
    done = json.loads((tmp_path / "stages" / "2-bc" / "done.json").read_text())
    assert done["stage"]["data"] == ["valuable", "rollback"] and done["global_step"] == 3
    assert done["packing"] is True


@pytest.mark.slow
def test_init_adapter_is_where_the_first_stage_starts(
    data, tmp_path: Path, adapters: dict[str, str]
) -> None:
    # A co-evolution round continuing the last round's model: with lr 0 the stage ends
    # where it started, i.e. at the given adapter (its rank 4, not lora.r), not a new LoRA.
    train(
        "+experiment=textui_warmup",
        "logger=none",
        "trainer.max_steps=2",
        "curriculum.stages.0.lr=0",
        f"init_adapter={adapters['policy']}",
        *FAST,
        *data[:3],
        f"hydra.run.dir={tmp_path}",
    )
    start, final = adapter(Path(adapters["policy"])), adapter(tmp_path / "adapter")
    done = json.loads((tmp_path / "stages" / "1-textui" / "done.json").read_text())
    assert done["started_from"] == adapters["policy"]
    assert start.keys() == final.keys()
    assert all(torch.equal(start[k], final[k]) for k in start)
    missing = subprocess.run(
        command("+experiment=textui_warmup", f"init_adapter={tmp_path / 'nowhere'}",
                *data[:3], f"hydra.run.dir={tmp_path / 'missing'}"),
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "init_adapter=" in missing.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(data, tmp_path: Path) -> None:
    overrides = (
        "+experiment=websynthesis",
        "logger=none",
        "curriculum.stages.0.max_steps=2",
        "curriculum.stages.1.max_steps=12",
        "checkpoint_every_n_steps=2",
        "data.batch_tokens=256",
        "data.max_length=256",
        "trainer.enable_progress_bar=false",
        *data,
        f"hydra.run.dir={tmp_path}",
    )
    checkpoint = tmp_path / "stages" / "2-bc" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        command(*overrides),
        cwd=REPO_ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no cleanup, no final checkpoint
        process.wait()
    assert checkpoint.is_file() and not (tmp_path / "stages" / "2-bc" / "done.json").exists()
    killed_at = torch.load(checkpoint, weights_only=False)["global_step"]
    stage_one = tmp_path / "stages" / "1-textui" / "done.json"
    before = (stage_one.read_text(), stage_one.stat().st_mtime_ns)

    result = train(*overrides)
    assert "stage textui: done earlier, skipped" in result.stdout + result.stderr
    assert (stage_one.read_text(), stage_one.stat().st_mtime_ns) == before
    done = json.loads((tmp_path / "stages" / "2-bc" / "done.json").read_text())
    assert 0 < killed_at == done["started_at_step"] < done["global_step"]
    assert done["resumed_from"] == str(checkpoint)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert_no_secret(tmp_path)


@pytest.mark.slow
def test_multirun_gives_each_job_its_run_dir_and_wandb_run(data, tmp_path: Path) -> None:
    train(
        "-m",
        "+experiment=bc_valuable",
        "trainer.max_steps=2",
        "data.scale=0.5,1.0",
        *FAST,
        data[3],
        f"hydra.sweep.dir={tmp_path}",
    )
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "adapter" / "adapter_model.safetensors").is_file()
        (run,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
        # Each job's W&B run is named after its sweep job, not all after the experiment.
        assert f"bc_valuable-{job.name}".encode() in run.read_bytes()
    kept = [
        json.loads((job / "stages" / "1-bc" / "done.json").read_text())["data"]["train"]["kept"]
        for job in jobs
    ]
    assert kept[0] < kept[1]  # data.scale 0.5 then 1.0
    assert_no_secret(tmp_path)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(data, tmp_path: Path) -> None:
    train(
        "+experiment=websynthesis",
        "trainer=ddp_cpu",
        "logger=none",
        "trainer.max_steps=2",
        "data.packing=true",
        *FAST,
        *data,
        f"hydra.run.dir={tmp_path}",
    )
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # the second rank ran
    for stage in ("1-textui", "2-bc"):
        assert (
            json.loads((tmp_path / "stages" / stage / "done.json").read_text())["global_step"] == 2
        )
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_experiments_and_sweeps_compose() -> None:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        stages = {}
        for name in (
            "textui_warmup",
            "bc_valuable",
            "bc_rollback",
            "bc_valuable_rollback",
            "world_model",
            "websynthesis",
            "demo",
        ):
            cfg = compose("train", overrides=[f"+experiment={name}", "logger=none"])
            stages[name] = [(s.name, list(s.data)) for s in cfg.curriculum.stages]
        assert stages["websynthesis"] == [
            ("textui", ["dense_caption", "element_function", "state_transition"]),
            ("bc", ["valuable", "rollback"]),
        ]
        assert stages["bc_rollback"] == [("bc", ["rollback"])]
        assert stages["world_model"] == [("world_model", ["world_model"])]
        sweep = compose(
            "train", overrides=["+hparams_search=trajectory_warmup"], return_hydra_config=True
        )
        assert sweep.hydra.mode == RunMode.MULTIRUN
        assert dict(sweep.hydra.sweeper.params) == {
            "curriculum": "textui_then_bc,bc_only",
            "curriculum.trajectories": "choice([valuable],[rollback],[valuable,rollback])",
        }
        scale = compose("train", overrides=["+hparams_search=data_scale"], return_hydra_config=True)
        assert scale.hydra.sweeper.params["data.scale"] == "0.125,0.25,0.5,1.0"
        for trainer in ("ddp", "ddp_cpu", "fsdp", "deepspeed"):
            compose("train", overrides=[f"trainer={trainer}"])
        slurm = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
        assert slurm.hydra.launcher.nodes == 2 and slurm.hydra.launcher.tasks_per_node == 8
    GlobalHydra.instance().clear()


def test_stage_data_comes_from_builders_and_files(data, tmp_path: Path) -> None:
    folder = Path(data[3].split("=", 1)[1]).parent  # where the fixture wrote its files
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "logger=none",
                f"data.trajectories_dir={folder}",  # the builders' source of valuable.jsonl
                f"+data.train_files.my_mix={folder / 'rollback.jsonl'}",  # any other name
            ],
        )
    GlobalHydra.instance().clear()
    mixes = MixSource(cfg)
    examples = mixes.stage(StageConfig(name="bc", data=["valuable", "my_mix"]))
    assert len(examples) == 24
    assert {e.meta.get("mix") for e in examples[:12]} == {"valuable"}
    with pytest.raises(ValueError, match="no data for mix 'nothing'"):
        mixes.stage(StageConfig(name="bc", data=["nothing"]))
