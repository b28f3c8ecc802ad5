"""The chaos soak: long jobs under many faults at once, checked against uninterrupted runs.

    python bench/soak.py synthesis [--tasks 8] [--kills 5] [--fault-share 0.2]
        [--malformed-share 0.1] [--seed 0]           # ~2 min on 2 cores
    python bench/soak.py synthesis --sabotage resume-forgets   # must FAIL: the self-check
    python bench/soak.py train [--seed 0]             # ~1 min on 2 cores
    python bench/soak.py evaluate [--seed 0]          # ~2 min on 2 cores (Chromium)
    python bench/soak.py coevolve [--seed 0]          # ~15 min on 2 cores (not in CI)
    python bench/soak.py all [--out soak.json]

Each scenario runs a job twice on the same inputs and seed, loopback only (the project's
own server, the tiny model): once uninterrupted, once under its faults and SIGKILLs,
restarted on the same run dir until it finishes, and compares what the two left.

- **synthesis** (:mod:`soak_synthesis`): ``synthesize.py`` through the OpenAI backend
  against the project's server, whose fault injector fails a share of the requests (500,
  429 with Retry-After, hangs past the timeout, bodies cut short or an HTML page) and gives
  malformed answers for another; killed ``--kills`` times at random moments.
- **train** (:mod:`soak_train`): the two-stage curriculum killed during a step, inside a
  checkpoint write, inside an adapter's save and before its publication.
- **evaluate** (:mod:`soak_evaluate`): live MiniWoB++ episodes with browser workers killed
  and hung mid-run and the job itself killed, rerun until no episode is left in error.
- **coevolve** (:mod:`soak_coevolve`): a co-evolution round after round 0, killed inside
  every stage kind (search, training, sampling, imagination, evaluation, fidelity).

Bad input in bulk is ``bench/fuzz_inputs.py``.

Prints one Markdown table per scenario (the rows BENCHMARKS.md quotes), writes every figure
to ``--out`` and exits 1 when any check failed, naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import soak_coevolve
import soak_evaluate
import soak_synthesis
import soak_train


def table(name: str, rows: list[tuple[str, Any]], failed: list[str]) -> str:
    lines = [f"**{name}**", "", "| figure | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    lines.append(f"| checks failed | {failed or 'none'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["synthesis", "train", "evaluate", "coevolve", "all"])
    parser.add_argument("--tasks", type=int, default=8, help="synthesis: tasks searched")
    parser.add_argument("--kills", type=int, default=5, help="synthesis: SIGKILLs")
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--malformed-share", type=float, default=0.1)
    parser.add_argument("--timeout-s", type=float, default=3.0, help="the client's per call")
    parser.add_argument("--attempt-timeout-s", type=float, default=900.0)
    parser.add_argument("--eval-attempts", type=int, default=3, help="evaluate: seeds a task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sabotage", choices=sorted(soak_synthesis.SABOTAGE), default=None)
    parser.add_argument("--work", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--out", default="soak.json")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)

    scenarios = {
        "synthesis": (lambda: soak_synthesis.soak_synthesis(args, work / "synthesis"),
                      soak_synthesis.rows),
        "train": (lambda: soak_train.soak_train(work / "train", args.seed), soak_train.rows),
        "evaluate": (lambda: soak_evaluate.soak_evaluate(work / "evaluate", args.seed,
                                                         args.eval_attempts),
                     soak_evaluate.rows),
        "coevolve": (lambda: soak_coevolve.soak_coevolve(work / "coevolve", args.seed),
                     soak_coevolve.rows),
    }  # fmt: skip
    results: dict[str, Any] = {}
    failures: list[str] = []
    for name, (soak, rows) in scenarios.items():
        if args.scenario not in (name, "all"):
            continue
        figures, failed = soak()
        results[name] = figures | {"failed": failed}
        print(table(name, rows(figures) if figures else [], failed))
        failures += [f"{name}: {f}" for f in failed]
    results["work_dir"] = str(work)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
