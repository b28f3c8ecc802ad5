"""The chaos soak of live evaluation (``python bench/soak.py evaluate``; see bench/soak.py).

``evaluate.py`` with the tiny model on MiniWoB++ in headless Chromium (three tasks x
``--eval-attempts`` seeds, nine episodes by default, two browsers at a time), run twice on
the same episodes: once uninterrupted (the reference), once with faults in its first two
processes: browser workers SIGKILLed (all at once, then one) and hung (SIGSTOP, until the step
timeout gives up on them), and the job itself SIGKILLed once. A worker's fault follows a
recorded step after which its episode goes on (not done, not a stop, steps left), so that it
lands mid-episode whatever the pace of the machine (the episode ends in an environment error)
or, on the other worker, perhaps in a reset (absorbed by the reset's retry on a new worker).
The job is started again on the same run dir, which reruns the episodes that ended in an
environment error, until none is left (at most ``RERUNS`` more times).

Asserted: no episode lost (every reference episode has an error-free line at the end); each
episode's latest line has the reference's success, reward, end, steps and actions; its last
run of rows in ``transitions.jsonl`` equals the reference's (the rows of runs an error cut
short stay in the file, as real transitions; the policy data reads only the last run, and
their count is reported); every environment error recorded is one the soak caused, and at
least one episode was cut short (else nothing rerun was tested).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from soak_common import REPO, wall_row

from websynthesis.data.episodes import latest_episodes, read_episodes
from websynthesis.data.records import read_records
from websynthesis.web.action_parser import parse_action
from websynthesis.web.action_space import ActionKind

MAX_STEPS = 3
OVERRIDES = [
    "model=tiny",
    "logger=none",
    "env=miniwob",
    "env.tasks=[click-button,enter-text,choose-list]",
    f"eval.max_steps={MAX_STEPS}",
    "env.pool_size=2",
    "env.step_timeout_s=6",
]
# The faults of the soak's first processes, in order; the job's own kill ends its process.
# The first process loses every browser at once right after a step (so an episode under way is
# cut whichever worker runs it: one idle worker killed is restarted at its next reset, cutting
# nothing), then the job, once that cut is on disk; it comes second because a short job (the CI
# size, six episodes) can finish before a later fault. The second meets single-worker faults.
PLAN = (("kill_workers", "kill_job"), ("hang_worker", "kill_worker", "hang_worker"))
RERUNS = 4
COMPARED = ("success", "reward", "end", "steps", "actions")


@dataclass
class EvalRun:
    dir: Path
    processes: list[dict[str, Any]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def wall_s(self) -> float:
        return sum(p["wall_s"] for p in self.processes)


def workers(pid: int) -> list[psutil.Process]:
    """The browser workers of the job ``pid``: its children started by multiprocessing's
    spawn."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):  # not the resource tracker
                found.append(child)
        except psutil.Error:
            continue
    return found


def goes_on(row: dict[str, Any]) -> bool:
    """Whether the episode of a recorded step has another step to take: a fault that comes
    right after it finds the episode under way (a fault after an episode's last step would find
    its worker idle, and a restarted idle worker cuts nothing)."""
    stopped = parse_action(row["action"]).kind is ActionKind.STOP
    return not (row["done"] or stopped or row["step"] + 1 >= MAX_STEPS)


def inject(
    process: subprocess.Popen[bytes],
    plan: tuple[str, ...],
    rng: random.Random,
    run: EvalRun,
) -> None:
    """Carry out ``plan`` on the running job. A worker's fault comes right after a step was
    recorded whose episode goes on, the first such after a random 0-2 more steps (its episode
    is then under way on some worker, which the fault hits with the pool's other worker as
    likely, or both for ``kill_workers``); the job's own kill once an episode cut by an
    earlier fault is recorded (or 20 s passed), after a random pause."""
    for fault in plan:
        if fault == "kill_job":
            deadline = time.monotonic() + 20
            while process.poll() is None and time.monotonic() < deadline and not errored(run.dir):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.5, 3.0))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                run.faults[fault] += 1
            return
        recorded = run.dir / "transitions.jsonl"  # read_records skips a line being written
        seen = len(list(read_records(recorded))) + rng.randint(0, 2)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            rows = list(read_records(recorded))
            if any(goes_on(row) for row in rows[seen:]):
                break
            seen = max(seen, len(rows))
            time.sleep(0.02)
        found = workers(process.pid)
        if process.poll() is not None or not found:
            return
        victims = found if fault == "kill_workers" else [rng.choice(found)]
        for victim in victims:
            try:
                victim.send_signal(signal.SIGSTOP if fault == "hang_worker" else signal.SIGKILL)
            except psutil.Error:
                continue
            run.faults[fault] += 1


def errored(run_dir: Path) -> int:
    latest = latest_episodes(run_dir / "episodes.jsonl")
    return sum(record.get("error") is not None for record in latest.values())


def run_evaluate(
    run_dir: Path, plans: tuple[tuple[str, ...], ...], rng: random.Random, attempts: int
) -> EvalRun:
    run = EvalRun(run_dir)
    env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "evaluate.py"), *OVERRIDES, f"eval.attempts={attempts}"]
    command.append(f"hydra.run.dir={run_dir}")
    log = run_dir.with_suffix(".log").open("ab")
    for index in range(len(plans) + 1 + RERUNS):
        plan = plans[index] if index < len(plans) else ()
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        injector = threading.Thread(target=inject, args=(process, plan, rng, run))
        injector.start()
        code = process.wait(timeout=1200)
        injector.join()
        run.processes.append(
            {"plan": list(plan), "returncode": code, "wall_s": round(time.monotonic() - started, 1)}
        )
        if index >= len(plans) and code == 0 and errored(run_dir) == 0:
            break
    return run


def compare(reference: EvalRun, soak: EvalRun) -> tuple[dict[str, Any], list[str]]:
    failed = []
    ref = latest_episodes(reference.dir / "episodes.jsonl")
    got = latest_episodes(soak.dir / "episodes.jsonl")
    lost = [k for k in ref if k not in got or got[k].get("error") is not None]
    if lost:
        failed.append(f"episodes lost: {lost}")
    differing = [
        k for k in ref if k in got and any(ref[k].get(f) != got[k].get(f) for f in COMPARED)
    ]
    if differing:
        failed.append(f"episodes differing from the reference's: {differing}")
    ref_steps = {e.key: e.steps for e in read_episodes(reference.dir)}
    soak_steps = {e.key: e.steps for e in read_episodes(soak.dir)}
    rows_differing = [k for k in ref_steps if ref_steps[k] != soak_steps.get(k)]
    if rows_differing:
        failed.append(f"transitions differing from the reference's: {rows_differing}")
    lines = list(read_records(soak.dir / "episodes.jsonl"))
    env_errors = sum(line.get("error") is not None for line in lines)
    caused = sum(soak.faults[kind] for kind in ("kill_worker", "kill_workers", "hang_worker"))
    if env_errors > caused:
        failed.append(f"{env_errors} environment errors recorded, {caused} caused")
    if env_errors == 0:
        failed.append("no fault cut an episode short: nothing was rerun")
    kept = sum(len(e.steps) for e in read_episodes(soak.dir))
    all_rows = sum(1 for _ in read_records(soak.dir / "transitions.jsonl"))
    final = soak.processes[-1]
    if final["returncode"] != 0 or errored(soak.dir):
        left = errored(soak.dir)
        failed.append(f"the last rerun exited {final['returncode']} with {left} errors")
    figures = {
        "episodes": len(ref),
        "faults_injected": dict(sorted(soak.faults.items())),
        "episodes_errored_by_faults": env_errors,
        "processes": soak.processes,
        "episodes_lost": len(lost),
        "episodes_differing": len(differing),
        "rows_of_cut_runs_kept": all_rows - kept,
        "reference_wall_s": round(reference.wall_s, 1),
        "soak_wall_s": round(soak.wall_s, 1),
        "overhead": round(soak.wall_s / reference.wall_s, 2),
    }
    return figures, failed


def soak_evaluate(work: Path, seed: int, attempts: int = 3) -> tuple[dict[str, Any], list[str]]:
    """The reference and the soak of ``attempts`` held-out seeds on each of three tasks."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    reference = run_evaluate(work / "reference", (), rng, attempts)
    if reference.processes[-1]["returncode"] != 0:
        return {}, [f"the reference run failed (log: {reference.dir}.log)"]
    soak = run_evaluate(work / "soak", PLAN, rng, attempts)
    return compare(reference, soak)


def rows(figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures BENCHMARKS.md quotes."""
    return [
        ("episodes", figures["episodes"]),
        ("faults injected by kind", figures["faults_injected"]),
        ("episodes cut by them (rerun)", figures["episodes_errored_by_faults"]),
        ("processes (reruns included)", len(figures["processes"])),
        ("episodes lost", figures["episodes_lost"]),
        ("episodes differing from the reference", figures["episodes_differing"]),
        ("rows of cut runs kept in transitions.jsonl", figures["rows_of_cut_runs_kept"]),
        wall_row(figures),
    ]
