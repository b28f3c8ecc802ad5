"""The chaos soak of ``train.py`` (``python bench/soak.py train``; see bench/soak.py).

The paper's two-stage curriculum (``+experiment=websynthesis``: TextUI warm-up, then BC) on
small chat files with the tiny model, run twice on the same data and seed: once
uninterrupted (the reference), once SIGKILLed at each kill point of :data:`PLAN` in turn and
restarted on the same run dir until it finishes. Kill points land where they say, by
patching the write they interrupt in the killed process only (never the reference):

- ``step``: at a random moment of training, after the attempt's first checkpoint;
- ``checkpoint``: inside a checkpoint write, half its bytes on disk;
- ``adapter``: inside an adapter's ``save_pretrained``, half its safetensors file written;
- ``publish``: with the adapter complete in its staging dir, before it is renamed into place.

Asserted: each kill point was reached (the attempt died by SIGKILL); the last restart exits
0; the final adapter and each stage's adapter hold exactly the reference's tensors
(``torch.equal``; the CPU kernels are deterministic and dropout is seeded per step); each
stage's ``done.json`` has the reference's step and validation loss; no temporary file or
staging dir is left in the run dir or in the job's ``$TMPDIR``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from soak_common import REPO, patched, wall_row

MIXES = ("dense_caption", "element_function", "state_transition", "valuable", "rollback")
# In this order the points that need training left (a step, a checkpoint) come before those
# at a stage's end (its adapter's save and publication).
PLAN = ("step", "checkpoint:2", "step", "checkpoint:1", "adapter:1", "publish:1")
STEPS = {"textui": 8, "bc": 40}
OVERRIDES = [
    "+experiment=websynthesis",
    "logger=none",
    "model=tiny",
    f"curriculum.stages.0.max_steps={STEPS['textui']}",
    f"curriculum.stages.1.max_steps={STEPS['bc']}",
    "checkpoint_every_n_steps=2",
    "data.batch_tokens=256",
    "data.max_length=256",
    "trainer.enable_progress_bar=false",
]
# Installed in a killed attempt before train.py runs: SOAK_KILL=<point>:<n> kills the
# process at the n-th time it reaches <point> (``step`` is the harness's timer: no patch).
KILLER = r"""
import os, signal, io as stdio
point, _, nth = os.environ.get("SOAK_KILL", "").partition(":")
nth, hits = int(nth or 1), [0]
def due():
    hits[0] += 1
    return hits[0] == nth
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "checkpoint":
    import websynthesis.training.checkpoint_io as checkpoint_io
    real_write = checkpoint_io.atomic_write
    def write(path, writer):
        if not due():
            return real_write(path, writer)
        def half(handle):
            buffer = stdio.BytesIO()
            writer(buffer)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            die()
        real_write(path, half)
    checkpoint_io.atomic_write = write
if point == "adapter":
    import peft.peft_model
    import safetensors.torch
    real_save = peft.peft_model.safe_save_file
    def save(tensors, filename, metadata=None):
        if not due():
            return real_save(tensors, filename, metadata=metadata)
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as handle:
            handle.write(data[: len(data) // 2])
        die()
    peft.peft_model.safe_save_file = save
if point == "publish":
    import pathlib
    real_rename = pathlib.Path.rename
    def rename(self, target):
        if self.name.startswith(".adapter.") and pathlib.Path(target).name == "adapter" and due():
            die()
        return real_rename(self, target)
    pathlib.Path.rename = rename
"""


def data_files(folder: Path, seed: int) -> list[str]:
    """``+data.train_files.<mix>=<file>`` overrides for five small chat JSONL files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, overrides = random.Random(seed), []
    for mix in MIXES:
        rows = []
        for i in range(12):
            page = "\n".join(f"\t[{j}] link 'item {rng.randint(0, 999)}'" for j in range(3, 30))
            user = f"OBJECTIVE:\nfind {i}\n\nOBSERVATION:\n{page}"
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are a web agent."},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": f"Let's think. ```click [{i + 3}]```"},
                    ],
                    "meta": {"task_id": f"{mix}-{i // 2}"},
                }
            )
        (folder / f"{mix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        overrides.append(f"+data.train_files.{mix}={folder / mix}.jsonl")
    return overrides


@dataclass
class Attempt:
    kill: str | None  # the kill point planned for it (None: run to the end)
    returncode: int
    wall_s: float


@dataclass
class TrainRun:
    dir: Path
    tmp: Path  # the processes' $TMPDIR
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(a.wall_s for a in self.attempts)


def newest_checkpoint(run_dir: Path) -> float:
    times = [p.stat().st_mtime for p in run_dir.glob("stages/*/checkpoints/last.ckpt")]
    return max(times, default=0.0)


def run_train(
    run_dir: Path, data: list[str], plan: tuple[str, ...], rng: random.Random, step_s: float
) -> TrainRun:
    run = TrainRun(run_dir, run_dir.with_name(run_dir.name + ".tmp"))
    run.tmp.mkdir(parents=True, exist_ok=True)
    command = [*OVERRIDES, *data, f"hydra.run.dir={run_dir}"]
    log = run_dir.with_suffix(".log").open("ab")
    for kill in [*plan, None]:
        env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TMPDIR": str(run.tmp)}
        if kill is None:
            argv = [sys.executable, str(REPO / "train.py"), *command]
        else:
            env["SOAK_KILL"] = kill
            argv = patched("train.py", KILLER, command)
        started = time.monotonic()
        before = newest_checkpoint(run_dir)
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
        if kill == "step":
            while process.poll() is None and newest_checkpoint(run_dir) <= before:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 2.0) * step_s)
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
        code = process.wait(timeout=900)
        run.attempts.append(Attempt(kill, code, round(time.monotonic() - started, 2)))
        if code == 0 and kill is not None:
            break  # finished before the kill point: the check below reports it
    return run


def adapters(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    found = {"adapter": run_dir / "adapter"}
    found |= {p.parent.name: p for p in run_dir.glob("stages/*/adapter")}
    return {name: load_file(path / "adapter_model.safetensors") for name, path in found.items()}


def leftovers(run: TrainRun) -> list[str]:
    """Temporary files and staging dirs a killed write left (goal: none)."""
    left = [p for p in run.dir.rglob(".*") if p.name.endswith(".tmp") or ".adapter." in p.name]
    left += [p for p in run.tmp.iterdir() if p.name.startswith("tmp")]  # tempfile's names
    return sorted(str(p) for p in left)


def compare(reference: TrainRun, soak: TrainRun) -> tuple[dict[str, Any], list[str]]:
    failed = []
    reached = [a.kill for a in soak.attempts if a.kill and a.returncode == -signal.SIGKILL]
    missed = [a.kill for a in soak.attempts if a.kill and a.returncode != -signal.SIGKILL]
    if missed or len(reached) < len(PLAN):
        failed.append(f"kill points not reached: {missed or list(PLAN[len(reached) :])}")
    final = soak.attempts[-1]
    if final.kill is not None or final.returncode != 0:
        failed.append(f"the last restart exited {final.returncode} (log: {soak.dir}.log)")
    differing: dict[str, int] = {}
    if final.returncode == 0:
        ref, got = adapters(reference.dir), adapters(soak.dir)
        for name, tensors in ref.items():
            other = got.get(name, {})
            differing[name] = sum(
                k not in other or not torch.equal(v, other[k]) for k, v in tensors.items()
            )
            if differing[name]:
                failed.append(f"{name}: {differing[name]} of {len(tensors)} tensors differ")
        for stage in reference.dir.glob("stages/*/done.json"):
            mine = json.loads(stage.read_text())
            theirs = json.loads((soak.dir / stage.relative_to(reference.dir)).read_text())
            for key in ("global_step", "val_loss"):
                if mine[key] != theirs[key]:
                    failed.append(f"{stage.parent.name}: {key} {theirs[key]} != {mine[key]}")
    left = leftovers(soak)
    if left:
        failed.append(f"left behind: {left}")
    figures = {
        "plan": list(PLAN),
        "kills_survived": len(reached),
        "attempts": [a.__dict__ for a in soak.attempts],
        "adapter_tensors_differing": differing,
        "leftovers": left,
        "reference_wall_s": round(reference.wall_s, 1),
        "soak_wall_s": round(soak.wall_s, 1),
        "overhead": round(soak.wall_s / reference.wall_s, 2),
    }
    return figures, failed


def soak_train(work: Path, seed: int) -> tuple[dict[str, Any], list[str]]:
    data = data_files(work / "data", seed)
    rng = random.Random(seed)
    reference = run_train(work / "reference", data, (), rng, 0.0)
    if reference.attempts[-1].returncode != 0:
        return {}, [f"the reference run failed (log: {reference.dir}.log)"]
    step_s = reference.wall_s / sum(STEPS.values())
    soak = run_train(work / "soak", data, PLAN, rng, step_s)
    return compare(reference, soak)


def rows(figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures BENCHMARKS.md quotes."""
    return [
        ("kills survived (planned points)", f"{figures['kills_survived']} ({figures['plan']})"),
        ("adapter tensors differing", figures["adapter_tensors_differing"]),
        ("temporary files and staging dirs left", len(figures["leftovers"])),
        wall_row(figures),
    ]
