"""What a co-evolution run shows: its checks, plots and a Markdown report (docs/results.md).

It reads the run dir's ``metrics.json`` (:mod:`websynthesis.pipelines.coevolve`) and answers
the three questions a user asks before trusting the pipeline with real compute:

1. does behaviour cloning on what MCTS found in the real environment beat the same policy
   untrained (round 0 against the baseline, on held-out seeds)?
2. does the trained world model know what an action changes, beyond copying the page
   (change F1 above the copy baseline, whole-page element F1 within ``page_f1_slack``)?
3. how does success move over the co-evolution rounds?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE_F1_SLACK = 0.02  # "within 2 points" of the copy baseline on whole-page element F1
MIN_RATIO = 2.0  # behaviour cloning's success over the untrained policy's


@dataclass(frozen=True)
class Check:
    """One claim, the numbers behind it and whether they hold."""

    name: str
    passed: bool
    detail: str


def rounds(metrics: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The rounds in order, as (index, metrics)."""
    return sorted((int(key), row) for key, row in metrics["rounds"].items())


def checks(metrics: dict[str, Any]) -> list[Check]:
    """The claims of the module docstring, checked on a run's metrics."""
    out = []
    train, held_out = set(metrics["train_seeds"]), set(metrics["eval_seeds"])
    out.append(
        Check(
            "held-out seeds are disjoint from training seeds",
            not train & held_out,
            f"train {sorted(train)}, held-out {sorted(held_out)}",
        )
    )
    first = metrics["rounds"].get("0", {})
    base, bc = first.get("baseline_success_rate"), first.get("success_rate")
    if base is not None and bc is not None:
        ratio = float("inf") if base == 0 and bc > 0 else (bc / base if base else 0.0)
        out.append(
            Check(
                f"behaviour cloning on MCTS-found trajectories >= {MIN_RATIO:g}x untrained",
                bc >= MIN_RATIO * base and bc > 0,
                f"{bc:.3f} vs {base:.3f} ({ratio:.2f}x)",
            )
        )
    fidelity = _last_fidelity(metrics)
    if fidelity is not None:
        model, copy = fidelity["model"], fidelity["copy_baseline"]
        out.append(
            Check(
                "world model beats copying on the F1 of what changed",
                model["change_f1"] > copy["change_f1"],
                f"change F1 {model['change_f1']:.3f} vs copy {copy['change_f1']:.3f}",
            )
        )
        out.append(
            Check(
                f"world model within {PAGE_F1_SLACK * 100:g} points of copying on page F1",
                model["f1_id"] >= copy["f1_id"] - PAGE_F1_SLACK,
                f"element F1 {model['f1_id']:.3f} vs copy {copy['f1_id']:.3f}",
            )
        )
    return out


def _last_fidelity(metrics: dict[str, Any]) -> dict[str, Any] | None:
    found = [row["fidelity"] for _, row in rounds(metrics) if row.get("fidelity")]
    return found[-1] if found else None


def plot_success(metrics: dict[str, Any], path: Path) -> None:
    """Held-out success per round, every task and overall, against the untrained policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = [(i, row) for i, row in rounds(metrics) if row.get("success_rate") is not None]
    xs = [i for i, _ in ordered]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for task in metrics.get("tasks", []):
        ys = [row.get("tasks", {}).get(task) for _, row in ordered]
        ax.plot(xs, ys, marker=".", linewidth=0.8, alpha=0.5, label=task)
    ax.plot(xs, [row["success_rate"] for _, row in ordered], marker="o", linewidth=2.4,
            color="black", label="all tasks")  # fmt: skip
    base = metrics["rounds"].get("0", {}).get("baseline_success_rate")
    if base is not None:
        ax.axhline(base, color="tab:red", linestyle="--", label="untrained (constrained)")
    ax.set_xticks(xs, ["0: BC on MCTS" if i == 0 else str(i) for i in xs])
    ax.set_xlabel("co-evolution round")
    ax.set_ylabel("success rate on held-out seeds")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_fidelity(metrics: dict[str, Any], path: Path) -> None:
    """Change F1 and whole-page element F1 per round, world model next to copying."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = [(i, row["fidelity"]) for i, row in rounds(metrics) if row.get("fidelity")]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.6), dpi=120)
    for ax, (metric, title) in zip(
        axes,
        (("change_f1", "F1 of what changed"), ("f1_id", "whole-page element F1")),
        strict=True,
    ):
        xs = [i for i, _ in ordered]
        width = 0.38
        ax.bar([x - width / 2 for x in xs], [f["model"][metric] for _, f in ordered], width,
               label="world model")  # fmt: skip
        ax.bar([x + width / 2 for x in xs], [f["copy_baseline"][metric] for _, f in ordered],
               width, label="copy the page")  # fmt: skip
        ax.set_xticks(xs)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(
    metrics: dict[str, Any],
    *,
    command: str,
    wall_time_s: float | None,
    machine: str,
    plots: dict[str, str],
) -> str:
    """The results page: how it was made, the checks, the per-round tables and plots."""
    lines = ["## How it was made", "", "```", command, "```", ""]
    if wall_time_s is not None:
        lines.append(f"Wall time: {wall_time_s / 60:.1f} min on {machine}.")
    lines += [
        f"Tasks: {', '.join(metrics['tasks'])}. Training seeds {_seeds(metrics['train_seeds'])};"
        f" held-out seeds {_seeds(metrics['eval_seeds'])} (never searched, sampled or trained on).",
        "",
        "## Checks",
        "",
        "| claim | holds | numbers |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |" for c in checks(metrics)
    ]
    lines += ["", "## Success on held-out seeds", "", _success_table(metrics), ""]
    if "success" in plots:
        lines += [f"![success per round]({plots['success']})", ""]
    lines += ["## World model against copying the page", "", _fidelity_table(metrics), ""]
    if "fidelity" in plots:
        lines += [f"![world-model fidelity]({plots['fidelity']})", ""]
    by_action = _by_action_table(metrics)
    if by_action:
        lines += ["By action kind, last round (change F1, model / copy):", "", by_action, ""]
    lines += ["## Data per round", "", _data_table(metrics), ""]
    return "\n".join(lines)


def _seeds(seeds: list[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(str(s) for s in ordered)


def _success_table(metrics: dict[str, Any]) -> str:
    tasks = metrics.get("tasks", [])
    head = ["policy", "all tasks", *tasks]
    rows = [head, ["---"] * len(head)]
    first = metrics["rounds"].get("0", {})
    if first.get("baseline_success_rate") is not None:
        rows.append(["untrained (constrained decoding)", _pct(first["baseline_success_rate"]),
                     *(_pct(first.get("baseline_tasks", {}).get(t)) for t in tasks)])  # fmt: skip
    for index, row in rounds(metrics):
        if row.get("success_rate") is None:
            continue
        name = "round 0: BC on MCTS-found" if index == 0 else f"round {index}: co-evolved"
        rows.append([name, _pct(row["success_rate"]),
                     *(_pct(row.get("tasks", {}).get(t)) for t in tasks)])  # fmt: skip
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _fidelity_table(metrics: dict[str, Any]) -> str:
    scored = [
        (str(index), row["fidelity"]) for index, row in rounds(metrics) if row.get("fidelity")
    ]
    return _f1_table("round", scored)


def _by_action_table(metrics: dict[str, Any]) -> str:
    kinds = (_last_fidelity(metrics) or {}).get("by_action") or {}
    return _f1_table("action", list(kinds.items())) if kinds else ""


def _f1_table(what: str, scored: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per (label, fidelity report): change and page F1, model next to copying."""
    rows = [f"| {what} | transitions | change F1 (model / copy) | page F1 (model / copy) |"]
    rows.append("| --- | --- | --- | --- |")
    for label, f in scored:
        m, c = f["model"], f["copy_baseline"]
        count = f.get("transitions") or m.get("transitions") or "–"
        rows.append(
            f"| {label} | {count} | {m['change_f1']:.3f} / {c['change_f1']:.3f} | "
            f"{m['f1_id']:.3f} / {c['f1_id']:.3f} |"
        )
    return "\n".join(rows)


def _data_table(metrics: dict[str, Any]) -> str:
    rows = ["| round | policy examples | from search | live accepted episodes | imagined |"]
    rows.append("| --- | --- | --- | --- | --- |")
    for index, row in rounds(metrics):
        data = row.get("policy_data") or {}
        search = sum(n for key, n in data.items() if key.startswith("search/"))
        imagined = row.get("imagine") or {}
        accepted = (imagined.get("outcomes") or {}).get("accepted", 0)
        asked = imagined.get("queries", 0)
        rows.append(
            f"| {index} | {data.get('examples', '–')} | {search} | "
            f"{data.get('live/accepted', 0)} | {accepted}/{asked} |"
        )
    return "\n".join(rows)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
