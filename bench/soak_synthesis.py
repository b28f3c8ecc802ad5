"""The chaos soak of ``synthesize.py`` (``python bench/soak.py synthesis``; see bench/soak.py).

The tiny model served by the project's own server (loopback, a bearer token,
one request per batch) with its :class:`~websynthesis.faults.FaultInjector`; ``synthesize.py``
talks to it through the OpenAI backend (``backend@model.backend=websynthesis``), one tree at
a time, no cache. Two runs on the same tasks and seeds:

1. the **reference**: malformed model answers on (``--malformed-share`` of the requests,
   chosen by a hash of the request, so they are a property of the input: the same request
   gets the same junk in both runs), no transport fault, never killed;
2. the **soak**: the same, plus transport chaos on ``--fault-share`` of the requests (500,
   429 with Retry-After, hangs past the client's timeout, 200s with a body cut short or an
   HTML page) and the process SIGKILLed ``--kills`` times at random moments while trees remain
   (each delay drawn from the reference's pace), restarted on the same run dir each time.

Asserted (exit 1 otherwise): every kill left the run unfinished and the restart resumed it;
the last restart exits 0; ``trees.jsonl`` has one intact line per task, no duplicate; the
trees (less their wall time) and every trajectory file equal the reference's byte for byte
(one request per server batch and one tree at a time: no batch composition can move a
near-tied token); the model-output failures counted in ``stats.json`` (parse failures by role
and kind) equal the reference's; no transport fault reached the data (no final transport
error); a third run, every request failing, does not exit 0. Reported: faults injected by
kind (server) against retries recorded by kind (client's ``stats.json``: faults met in work
a kill threw away go with that work, so recorded <= injected), kills, bytes differing, and
the wall-time overhead.

``--sabotage store-rewrites`` (a run store whose appends rewrite the file) or
``resume-forgets`` (a restart that reads none of the records written) breaks the soak run's
resume on purpose, never the reference's: the soak must fail, which shows its checks can see
a broken resume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from soak_common import REPO, patched, wall_row

from websynthesis.backends.stack import build_stack
from websynthesis.config import register_configs
from websynthesis.data.tasks import load_tasks
from websynthesis.faults import FaultInjector
from websynthesis.io import read_jsonl
from websynthesis.server import build_app, serve_in_background
from websynthesis.synthesis import TRAJECTORY_KINDS

TOKEN_ENV = "WEBSYNTHESIS_SERVE_TOKEN"
# How the client names each transport fault it retries.
SEEN_AS = {
    "server_error": "server_error",
    "rate_limited": "rate_limited",
    "hang": "timeout",
    "truncated": "bad_response",
    "garbage": "bad_response",
}
# A search budget that keeps a tree to seconds on 2 CPU cores (the pipeline test's).
BUDGET = [
    "search.iterations=3",
    "search.branch=2",
    "search.max_depth=2",
    "model.roles.world_model.max_new_tokens=64",
    "model.roles.world_model.max_retries=0",
]
# Resume broken on purpose (the soak run only, never the reference): ``store-rewrites``,
# each append rewrites the file with the new record alone; ``resume-forgets``, a restart
# reads none of the records already written (and so searches their tasks again).
SABOTAGE = {
    "store-rewrites": (
        "import websynthesis.io as io\n"
        "def rewrite(path, line):\n"
        "    io.atomic_write_text(path, line + '\\n')\n"
        "import websynthesis.synthesis.store as store\n"
        "store.append_line = rewrite\n"
    ),
    "resume-forgets": (
        "import websynthesis.synthesis.store as store\nstore.RunStore._read = lambda self: []\n"
    ),
}


@dataclass
class Attempt:
    """One process of a run: how it ended and how far the run was when it did."""

    returncode: int
    wall_s: float
    trees_after: int
    killed: bool


@dataclass
class Run:
    dir: Path
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(a.wall_s for a in self.attempts)


def tasks_file(path: Path, count: int) -> Path:
    """``count`` demo tasks in WebArena's config format under distinct ids (distinct seeds)."""
    demo = load_tasks("demo")
    rows = []
    for i in range(count):
        config = demo[i % len(demo)].to_config() | {"task_id": 800 + i, "require_login": False}
        rows.append(json.dumps(config))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def trees_written(run_dir: Path) -> int:
    path = run_dir / "trees.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


class Soak:
    """The server and the synthesis command shared by the reference and the soak runs."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.faults = FaultInjector()
        self.token = secrets.token_hex(16)
        self.tasks = tasks_file(work / "tasks.jsonl", args.tasks)
        self.startup_s = 10.0  # the process's start (imports, Hydra, tasks): from the reference
        self.tree_s: list[float] = []  # the reference's first process: when each tree landed

    def command(
        self, url: str, run_dir: Path, sabotage: str | None = None, extra: tuple[str, ...] = ()
    ) -> list[str]:
        overrides = [
            "logger=none",
            "progress=false",
            "model=tiny",
            f"taskset.path={self.tasks}",
            *BUDGET,
            "search.concurrent_trees=1",
            "model.batching.enabled=false",
            "model.cache=false",
            "backend@model.backend=websynthesis",
            f"model.backend.base_url={url}/v1",
            f"+model.backend.timeout_s={self.args.timeout_s}",
            "+model.backend.max_retries=30",
            "+model.backend.backoff_base_s=0.05",
            "+model.backend.backoff_max_s=0.5",
            f"hydra.run.dir={run_dir}",
            *extra,
        ]
        if sabotage:
            return patched("synthesize.py", SABOTAGE[sabotage], overrides)
        return [sys.executable, str(REPO / "synthesize.py"), *overrides]

    def run(
        self,
        url: str,
        run_dir: Path,
        kills: int,
        pace_s: float | None,
        extra: tuple[str, ...] = (),
    ) -> Run:
        """Run to the end, SIGKILLing the process ``kills`` times on the way (each delay a
        random share of the time the remaining trees took the reference, ``pace_s`` a tree)."""
        run = Run(run_dir)
        env = os.environ | {TOKEN_ENV: self.token, "WANDB_MODE": "offline"}
        log = run_dir.with_suffix(".log").open("ab")
        while True:
            started = time.monotonic()
            process = subprocess.Popen(
                self.command(url, run_dir, self.args.sabotage if kills else None, extra),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=log,
            )
            killed, deadline = False, None
            if len(run.attempts) < kills and pace_s is not None:
                remaining = self.args.tasks - trees_written(run_dir)
                delay = self.rng.uniform(0.15, 0.85) * (self.startup_s + remaining * pace_s)
                deadline = started + delay
            timing = pace_s is None and not run.attempts and not self.tree_s
            while process.poll() is None:
                now = time.monotonic()
                if timing:
                    landed = trees_written(run_dir) - len(self.tree_s)
                    self.tree_s += [now - started] * max(0, landed)
                if deadline is not None and now >= deadline:
                    os.kill(process.pid, signal.SIGKILL)
                    killed = True
                    break
                if now - started > self.args.attempt_timeout_s:
                    process.kill()
                    break
                time.sleep(0.05)
            code = process.wait()
            run.attempts.append(
                Attempt(code, round(time.monotonic() - started, 2), trees_written(run_dir), killed)
            )
            if not killed:
                return run


def reference_pace(tree_s: list[float], wall_s: float, tasks: int) -> tuple[float, float]:
    """A tree's time and the process's start in the reference, from when its trees landed.

    The start is what comes before the first tree less one tree's time; a tree's time is the
    gap between the first and the last tree (the whole wall over the tasks would count the
    start in every tree, and a kill drawn from it could fall after the run's end)."""
    if len(tree_s) >= 2:
        pace = (tree_s[-1] - tree_s[0]) / (len(tree_s) - 1)
    else:
        pace = wall_s / (2 * tasks)
    first = tree_s[0] if tree_s else wall_s / 2
    return pace, max(1.0, first - pace)


def canonical_trees(run_dir: Path) -> dict[str, str]:
    out = {}
    for _, record in read_jsonl(run_dir / "trees.jsonl"):
        record = dict(record)
        for part in ("tree", "summary"):  # wall time is the one field a rerun may change
            record[part] = {k: v for k, v in record[part].items() if k != "elapsed_s"}
        out[str(record["task_id"])] = json.dumps(record, sort_keys=True)
    return out


def differing_bytes(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(
        max(len(a.get(key, "")), len(b.get(key, "")))
        for key in set(a) | set(b)
        if a.get(key) != b.get(key)
    )


def compare(reference: Run, soak: Run, tasks: int, kills: int) -> tuple[dict[str, Any], list[str]]:
    """The soak's figures and the checks it failed (empty: all held)."""
    failed: list[str] = []
    final = soak.attempts[-1]
    kills_made = sum(a.killed for a in soak.attempts)
    if kills_made < kills:
        failed.append(f"{kills_made} kills of {kills}: the run ended before the rest")
    if any(a.killed and a.trees_after >= tasks for a in soak.attempts):
        failed.append("a kill came after the last tree: it interrupted nothing")
    if final.returncode != 0:
        failed.append(f"the last restart exited {final.returncode} (log: {soak.dir}.log)")
    lines = (soak.dir / "trees.jsonl").read_bytes().splitlines() if final.returncode == 0 else []
    ids = [json.loads(line)["task_id"] for line in lines]
    if len(ids) != tasks or len(set(ids)) != tasks:
        failed.append(f"trees.jsonl: {len(ids)} lines, {len(set(ids))} tasks, of {tasks}")
    ref_trees = canonical_trees(reference.dir)
    soak_trees = canonical_trees(soak.dir) if lines else {}
    tree_bytes = differing_bytes(ref_trees, soak_trees)
    if tree_bytes:
        failed.append(f"trees differ from the reference's ({tree_bytes} bytes)")
    trajectory_bytes = {}
    for kind in TRAJECTORY_KINDS:
        ref = (reference.dir / "trajectories" / f"{kind}.jsonl").read_bytes()
        path = soak.dir / "trajectories" / f"{kind}.jsonl"
        got = path.read_bytes() if path.exists() else b""
        trajectory_bytes[kind] = 0 if got == ref else max(len(got), len(ref))
        if got != ref:
            failed.append(f"trajectories/{kind}.jsonl differs from the reference's")
    ref_stats = json.loads((reference.dir / "stats.json").read_text())
    soak_stats = json.loads((soak.dir / "stats.json").read_text())
    ref_outcomes = ref_stats["counters"]["outcomes"]
    soak_outcomes = soak_stats["counters"]["outcomes"]
    if ref_outcomes != soak_outcomes:
        failed.append("the model-output failures counted differ from the reference's")
    transport = soak_stats["counters"].get("transport") or {}
    if transport.get("errors"):
        failed.append(f"transport errors reached the run: {transport['errors']}")
    figures = {
        "tasks": tasks,
        "kills": kills_made,
        "attempts": [a.__dict__ for a in soak.attempts],
        "trees_differing_bytes": tree_bytes,
        "trajectories_differing_bytes": trajectory_bytes,
        "model_output_failures": ref_outcomes,
        "retried_recorded": transport.get("retried") or {},
        "calls_recorded": transport.get("calls", 0),
        "reference_wall_s": round(reference.wall_s, 1),
        "soak_wall_s": round(soak.wall_s, 1),
        "overhead": round(soak.wall_s / reference.wall_s, 2),
    }
    return figures, failed


def soak_synthesis(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list[str]]:
    """Run the reference and the soak in ``work``; the figures and the checks that failed."""
    work.mkdir(parents=True, exist_ok=True)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="serve", overrides=["model=tiny", "paths.root_dir=."])
    backend = build_stack(cfg.model, batch=False).backend
    soak = Soak(args, work)
    app = build_app(backend, [cfg.model.name], soak.token, max_batch_size=1, faults=soak.faults)
    with serve_in_background(app) as url:
        soak.faults.malform(args.malformed_share, seed=args.seed)
        reference = soak.run(url, work / "reference", kills=0, pace_s=None)
        if reference.attempts[-1].returncode != 0:
            return {}, [f"the reference run failed (log: {work / 'reference'}.log)"]
        pace, soak.startup_s = reference_pace(soak.tree_s, reference.wall_s, args.tasks)
        malformed_reference = soak.faults.injected["malformed"]
        soak.faults.injected.clear()
        soak.faults.chaos(
            args.fault_share, seed=args.seed, hang_s=args.timeout_s + 1.0, retry_after_s=0.05
        )
        run = soak.run(url, work / "soak", kills=args.kills, pace_s=pace)
        injected = Counter(soak.faults.injected)
        dead_code = None
        if not args.sabotage:  # a sabotaged soak checks the checks, nothing else
            # Every request failing: the run must not exit 0 (nothing was produced).
            soak.faults.chaos(1.0, kinds=["server_error"], seed=args.seed)
            retries = ("++model.backend.max_retries=1",)
            dead_code = soak.run(url, work / "all_fail", 0, None, retries).attempts[-1].returncode
        soak.faults.chaos(0.0)
    figures, failed = compare(reference, run, args.tasks, args.kills)
    if dead_code == 0:
        failed.append("a run whose every request failed exited 0")
    malformed = injected.pop("malformed", 0)
    seen: Counter[str] = Counter()
    for kind, count in injected.items():
        seen[SEEN_AS[kind]] += count
    recorded = Counter(figures["retried_recorded"])
    if any(recorded[kind] > seen[kind] for kind in recorded):
        failed.append(f"more retries recorded than faults injected: {recorded} > {seen}")
    figures |= {
        "faults_injected": dict(sorted(injected.items())),
        "faults_injected_total": injected.total(),
        "retried_recorded_total": recorded.total(),
        "malformed_answers": {"reference": malformed_reference, "soak": malformed},
        "sabotage": args.sabotage,
        "all_requests_failing_exit_code": dead_code,
    }
    return figures, failed


def rows(figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures BENCHMARKS.md quotes."""
    kills = figures["kills"]
    attempts = figures["attempts"]
    trees_at_kills = [a["trees_after"] for a in attempts if a["killed"]]
    return [
        ("tasks", figures["tasks"]),
        ("kills survived (trees done at each)", f"{kills} ({trees_at_kills})"),
        ("faults injected by kind", figures["faults_injected"]),
        ("retries recorded by kind", figures["retried_recorded"]),
        ("malformed answers (reference / soak)", figures["malformed_answers"]),
        ("bytes of trees differing", figures["trees_differing_bytes"]),
        ("exit code when every request fails", figures["all_requests_failing_exit_code"]),
        ("bytes of trajectories differing", figures["trajectories_differing_bytes"]),
        wall_row(figures),
    ]
