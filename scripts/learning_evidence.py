"""Reproduce docs/results.md: do trajectories searched inside the learned world model train a
better agent? One command, every arm on the same held-out seeds.

    python scripts/learning_evidence.py                      # the full profile: docs/results.*
    python scripts/learning_evidence.py evidence=mini        # the miniature CI runs
    python scripts/learning_evidence.py tasks=[click-link,enter-password] pipeline_seeds=[3]

Hydra composes conf/learning_evidence.yaml (profiles in conf/evidence/); the run dir is
``outputs/evidence/<profile>`` (``hydra.run.dir=...`` to change it) and a killed run resumes
there. :mod:`websynthesis.pipelines.evidence` runs the stages; the report (goals, tables,
plots, ``results.json``) goes to ``docs/`` for the full profile on the suite, else into the
run dir (``report_dir=...`` to choose), followed by ``<report>_notes.md`` when there is one
(the hand-written reading of the numbers). ``sessions.json`` in the run dir lists every
session that ran stages there, its command and commit, which the report shows. It exits 1
when a stage produced nothing.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from websynthesis.config import register_configs  # noqa: E402

register_configs()

TITLE = "# Results: agents trained on trajectories searched inside the learned world model"
INTRO = """\
No pretrained weights can be had on the machines this project is built on, so every model here
is a tiny randomly initialised Qwen2-architecture model (2 layers, hidden size 256, a locally
trained tokenizer) trained with LoRA on data the pipeline makes: the policy, the world model
and the process reward model. Every arm is evaluated on the same held-out MiniWoB++ episodes,
paired (McNemar), with Wilson 95 % intervals. `untrained` is the same policy with no adapter
under the same grammar (a random *valid* action of the environment's declared action set);
`random_click` is a uniform random click among the page's clickable elements.
"""


@hydra.main(version_base="1.3", config_path="../conf", config_name="learning_evidence")
def main(cfg: DictConfig) -> None:
    from websynthesis.evaluation import evidence_report as report
    from websynthesis.io import atomic_write_json, atomic_write_text
    from websynthesis.pipelines import evidence, evidence_results
    from websynthesis.pipelines.stages import read_json

    out = Path(cfg.paths.output_dir)
    profile = HydraConfig.get().runtime.choices.get("evidence", "")
    ran = [o for o in HydraConfig.get().overrides.task if not o.startswith("report_only")]
    command = shlex.join(["python", "scripts/learning_evidence.py", *ran])  # what ran the stages
    # Every session that ran stages on this run dir, with the code it ran (recorded before
    # its stages: a killed session counts too): a run of two parts shows both commands.
    sessions = read_json(out / "sessions.json", [])
    if cfg.report_only:
        # the report of what has finished so far, no stage run (e.g. while a long run goes on
        # in another process, or after one was stopped)
        results = evidence_results.results(cfg, out)
    else:
        before = read_json(out / "state.json", None)
        earlier = sessions
        sessions = [*earlier, {"command": command, "commit": _commit(), "started": _now()}]
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sessions.json", sessions)
        try:
            results = evidence.run(cfg)
        except BaseException:
            if read_json(out / "state.json", None) == before:  # it ran no stage: not a session
                atomic_write_json(out / "sessions.json", earlier)
            raise
    # Every stage's wall time over the sessions that ran it (state.json): a resumed run adds
    # up, and rewriting the report of a finished run adds nothing.
    results["wall_time_min"] = round(sum(results["stage_minutes"].values()), 1)
    atomic_write_json(out / "results.json", results)

    report_dir = (
        Path(cfg.report_dir)
        if cfg.get("report_dir")
        else (ROOT / "docs" if profile == "full" else out)
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {"success": "results_success.png", "world_model": "results_world_model.png"}
    report.plot_arms(results, report_dir / plots["success"])
    if results.get("world_model"):
        report.plot_world_model(results, report_dir / plots["world_model"])
    else:
        plots.pop("world_model")
    if results.get("rounds"):
        plots["rounds"] = "results_rounds.png"
        report.plot_rounds(results, report_dir / plots["rounds"])
    shown = [f"{s['command']}   # commit {s['commit']}, {s['started']}" for s in sessions]
    body = report.markdown(
        results, command="\n".join(shown) or command, machine=_machine(), plots=plots
    )
    notes = report_dir / "results_notes.md"  # the hand-written reading, kept apart
    tail = f"\n{notes.read_text(encoding='utf-8')}" if notes.is_file() else ""
    atomic_write_text(report_dir / "results.md", f"{TITLE}\n\n{INTRO}\n{body}{tail}")
    atomic_write_json(report_dir / "results.json", results)
    for goal in report.goals(results):
        mark = "n/a" if goal.holds is None else "ok" if goal.holds else "MISSED"
        print(f"[{mark}] {goal.name}: {goal.detail}")
    print(f"report: {report_dir / 'results.md'}")


def _commit() -> str | None:
    """The checkout's commit (``+changes`` when tracked files differ from it, the reports this
    script writes apart), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results*"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({platform.machine()}, {platform.system()}), no GPU"


if __name__ == "__main__":
    main()
