"""The chaos soak of co-evolution (``python bench/soak.py coevolve``; see bench/soak.py).

``coevolve.py`` for one round after round 0 on two MiniWoB++ tasks with the tiny model
(every stage kind: baseline, live search, policy and world-model training, fidelity,
evaluation, self-sampling, imagination), run twice: once uninterrupted (the reference),
once SIGKILLed inside every stage kind at least once (a random moment after the stage's
``stage:`` line, in a kind not killed yet) and restarted on the same run dir until it
finishes. One tree, one request and one browser at a time, so that nothing but a kill can
make the two runs differ.

Asserted: a kill landed inside every stage kind; the last restart exits 0; the stages
recorded done are the reference's, in its order; ``metrics.json`` (every round's success
rates, data counts and fidelity) equals the reference's; every adapter holds the
reference's tensors; every stage's episodes (latest line per episode) equal the reference's.
Not in CI (about 15 minutes on 2 cores): its figures are in BENCHMARKS.md.
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
from soak_common import REPO, wall_row

from websynthesis.data.episodes import latest_episodes

KINDS = ("baseline", "search", "policy", "world_model", "fidelity", "evaluate", "sample", "imagine")
COMPARED = ("success", "reward", "end", "steps", "actions")


def hydra_list(items: list[str]) -> str:
    return "[" + ",".join(json.dumps(item) for item in items) + "]"


OVERRIDES = [
    "rounds=1",
    "tasks=[click-test,click-button]",
    "train_seeds=[0,1]",
    "eval_seeds=[1000,1001]",
    "logger=none",
    "imagine.max_steps=2",
    "imagine.threshold=0.0",
    f"overrides.common={hydra_list(['model=tiny', 'logger=none'])}",
    f"overrides.env={hydra_list(['env.max_steps=3', 'env.pool_size=1'])}",
    "overrides.search="
    + hydra_list(
        [
            "search=small",
            "search.iterations=4",
            "search.branch=2",
            "search.max_depth=2",
            "search.concurrent_trees=1",
            "model.batching.enabled=false",
        ]
    ),
    "overrides.policy="
    + hydra_list(
        [
            "curriculum=bc_only",
            "curriculum.trajectories=[trajectories]",
            "curriculum.stages.0.max_steps=6",
            "checkpoint_every_n_steps=2",
        ]
    ),
    "overrides.world_model="
    + hydra_list(
        [
            "+experiment=world_model",
            "curriculum.stages.0.max_steps=6",
            "checkpoint_every_n_steps=2",
            "data.max_length=2048",
            "data.batch_tokens=4096",
        ]
    ),
]


@dataclass
class CoevolveRun:
    dir: Path
    processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(p["wall_s"] for p in self.processes)


def current_stage(log: Path, offset: int) -> str | None:
    """The stage of the last ``stage: round_r/<kind>`` line logged after ``offset``."""
    text = log.read_bytes()[offset:].decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if "stage: " in line]
    found = [line.rsplit("stage: ", 1)[1].strip() for line in lines]
    return found[-1] if found else None


def run_coevolve(run_dir: Path, kill: bool, rng: random.Random, limit: int = 20) -> CoevolveRun:
    run = CoevolveRun(run_dir)
    env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "coevolve.py"), *OVERRIDES, f"hydra.run.dir={run_dir}"]
    log_path = run_dir.with_suffix(".log")
    killed_kinds: set[str] = set()
    for _ in range(limit):
        offset = log_path.stat().st_size if log_path.exists() else 0
        started = time.monotonic()
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        killed_in = None
        while kill and process.poll() is None:
            stage = current_stage(log_path, offset)
            kind = stage.rsplit("/", 1)[-1] if stage else None
            if kind in KINDS and kind not in killed_kinds:
                time.sleep(rng.uniform(0.5, 4.0))
                landed = current_stage(log_path, offset)
                if process.poll() is None and landed is not None:
                    os.kill(process.pid, signal.SIGKILL)
                    killed_in = landed
                    killed_kinds.add(landed.rsplit("/", 1)[-1])
                break
            time.sleep(0.1)
        code = process.wait(timeout=1800)
        wall = round(time.monotonic() - started, 1)
        run.processes.append({"killed_in": killed_in, "returncode": code, "wall_s": wall})
        if code == 0:
            return run
    return run


def episodes_of(run_dir: Path) -> dict[str, dict[Any, dict[str, Any]]]:
    found = {}
    for path in sorted(run_dir.glob("round_*/*/episodes.jsonl")):
        latest = latest_episodes(path)
        stage = str(path.parent.relative_to(run_dir))
        found[stage] = {key: {f: rec.get(f) for f in COMPARED} for key, rec in latest.items()}
    return found


def adapter_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(path.relative_to(run_dir)): load_file(path)
        for path in sorted(run_dir.glob("round_*/*/adapter/adapter_model.safetensors"))
    }


def compare(reference: CoevolveRun, soak: CoevolveRun) -> tuple[dict[str, Any], list[str]]:
    failed = []
    killed = [p["killed_in"] for p in soak.processes if p["killed_in"]]
    missing = sorted(set(KINDS) - {stage.rsplit("/", 1)[-1] for stage in killed})
    if missing:
        failed.append(f"no kill inside: {missing}")
    final = soak.processes[-1]
    if final["returncode"] != 0:
        failed.append(f"the last restart exited {final['returncode']} (log: {soak.dir}.log)")
        return {"processes": soak.processes}, failed
    ref_state = json.loads((reference.dir / "state.json").read_text())
    soak_state = json.loads((soak.dir / "state.json").read_text())
    if ref_state["done"] != soak_state["done"]:
        failed.append(f"stages done: {soak_state['done']} != {ref_state['done']}")
    ref_metrics = json.loads((reference.dir / "metrics.json").read_text())
    soak_metrics = json.loads((soak.dir / "metrics.json").read_text())
    if ref_metrics != soak_metrics:
        failed.append("metrics.json differs from the reference's")
    ref_episodes, soak_episodes = episodes_of(reference.dir), episodes_of(soak.dir)
    stages_differing = [s for s in ref_episodes if ref_episodes[s] != soak_episodes.get(s)]
    if stages_differing:
        failed.append(f"episodes differ in: {stages_differing}")
    ref_adapters, soak_adapters = adapter_tensors(reference.dir), adapter_tensors(soak.dir)
    tensors_differing = {
        name: sum(
            k not in soak_adapters.get(name, {}) or not torch.equal(v, soak_adapters[name][k])
            for k, v in tensors.items()
        )
        for name, tensors in ref_adapters.items()
    }
    if any(tensors_differing.values()) or set(ref_adapters) != set(soak_adapters):
        failed.append(f"adapters differ: {tensors_differing}")
    figures = {
        "stages": len(ref_state["done"]),
        "kills": killed,
        "processes": soak.processes,
        "episodes_compared": sum(len(v) for v in ref_episodes.values()),
        "stages_with_episodes_differing": stages_differing,
        "adapter_tensors_differing": tensors_differing,
        "metrics_equal": ref_metrics == soak_metrics,
        "reference_wall_s": round(reference.wall_s, 1),
        "soak_wall_s": round(soak.wall_s, 1),
        "overhead": round(soak.wall_s / reference.wall_s, 2),
    }
    return figures, failed


def soak_coevolve(work: Path, seed: int) -> tuple[dict[str, Any], list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    reference = run_coevolve(work / "reference", False, rng, limit=1)
    if reference.processes[-1]["returncode"] != 0:
        return {}, [f"the reference run failed (log: {reference.dir}.log)"]
    soak = run_coevolve(work / "soak", True, rng)
    return compare(reference, soak)


def rows(figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures BENCHMARKS.md quotes."""
    return [
        ("stages", figures["stages"]),
        ("kills survived (stage each landed in)", f"{len(figures['kills'])} {figures['kills']}"),
        (
            "episodes compared / stages differing",
            f"{figures['episodes_compared']} / "
            f"{figures['stages_with_episodes_differing'] or 'none'}",
        ),
        ("adapter tensors differing", figures["adapter_tensors_differing"]),
        ("metrics.json equal", figures["metrics_equal"]),
        wall_row(figures),
    ]
