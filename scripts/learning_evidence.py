"""Reproduce docs/results.md: evidence, on 2 CPU cores, that the whole pipeline learns.

    python scripts/learning_evidence.py                 # the full run (< 60 min), docs/results.md
    python scripts/learning_evidence.py --profile mini  # the one-round miniature CI runs

It runs the co-evolution driver with ``+evidence=<profile>`` (conf/evidence/) in
``outputs/evidence/<profile>/`` (run it again to resume a killed run), then writes the
report (checks, tables, PNG plots) with :mod:`websynthesis.evolution.report`, followed by
``<report>_notes.md`` when there is one (the hand-written reading of the numbers). The exit code
is 1 when ``--strict`` is given and a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from websynthesis.evolution import report  # noqa: E402
from websynthesis.io import atomic_write_json, atomic_write_text  # noqa: E402

TITLE = "# Results: the pipeline learns (MiniWoB++, tiny models from scratch, CPU)"
INTRO = """\
No pretrained weights can be had on the machines this project is built on, so this page shows
that what the project builds learns *by itself*: tiny randomly initialised Qwen2-architecture
models (2 layers, hidden size 256, a locally trained tokenizer) are trained with LoRA on data
the pipeline makes, and are measured on MiniWoB++ seeds never used for search or training.
The untrained baseline is the same policy with the same grammar-constrained decoding, i.e. a
random *valid* action, under the same step limit. The world model answers in the changes form
(`model.roles.world_model.template=world_model_delta`) and is scored on the baseline's real
held-out steps against copying the current page.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", help="conf/evidence/<profile>.yaml")
    parser.add_argument("--out", type=Path, help="run dir (default outputs/evidence/<profile>)")
    parser.add_argument("--report", type=Path, help="default: docs/results.md (full), else <out>")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides of the run")
    args = parser.parse_args()
    out = (args.out or ROOT / "outputs" / "evidence" / args.profile).resolve()
    default_report = ROOT / "docs" / "results.md" if args.profile == "full" else out / "results.md"
    report_path = (args.report or default_report).resolve()

    command = [
        sys.executable, "-m", "websynthesis.coevolve", f"+evidence={args.profile}",
        f"hydra.run.dir={out}", *args.overrides,
    ]  # fmt: skip
    before = _stages_done(out)
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = _add_wall_time(out, time.monotonic() - started, worked=_stages_done(out) != before)

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    stem = report_path.stem
    plots = {"success": f"{stem}_success.png", "fidelity": f"{stem}_fidelity.png"}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report.plot_success(metrics, report_path.parent / plots["success"])
    if any(row.get("fidelity") for _, row in report.rounds(metrics)):
        report.plot_fidelity(metrics, report_path.parent / plots["fidelity"])
    else:
        plots.pop("fidelity")
    shown = ["python", "scripts/learning_evidence.py", "--profile", args.profile, *args.overrides]
    body = report.markdown(
        metrics,
        command=shlex.join(shown),
        wall_time_s=wall,
        machine=_machine(),
        plots=plots,
    )
    notes = report_path.with_name(f"{stem}_notes.md")  # hand-written reading, kept apart
    tail = f"\n{notes.read_text(encoding='utf-8')}" if notes.is_file() else ""
    atomic_write_text(report_path, f"{TITLE}\n\n{INTRO}\n{body}{tail}")
    failed = [check for check in report.checks(metrics) if not check.passed]
    for check in report.checks(metrics):
        print(f"[{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    print(f"report: {report_path}")
    return 1 if args.strict and failed else 0


def _stages_done(out: Path) -> list[str]:
    path = out / "state.json"
    return json.loads(path.read_text())["done"] if path.is_file() else []


def _add_wall_time(out: Path, seconds: float, *, worked: bool) -> float:
    """The run's wall time over every session that worked on it (a resumed run adds up;
    rewriting the report of a finished run adds nothing)."""
    path = out / "wall_time.json"
    sessions = json.loads(path.read_text())["sessions"] if path.is_file() else []
    if not worked:
        return sum(sessions)
    sessions.append(round(seconds, 1))
    atomic_write_json(path, {"sessions": sessions, "total_s": round(sum(sessions), 1)})
    return sum(sessions)


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({platform.machine()}, {platform.system()}), no GPU"


if __name__ == "__main__":
    sys.exit(main())
