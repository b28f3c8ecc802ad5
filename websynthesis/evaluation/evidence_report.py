"""What the learning evidence shows: its goals, tables and plots, from ``results.json``.

It reads only ``results.json`` (:func:`websynthesis.pipelines.evidence_results.results`), so
the page can be regenerated from the numbers alone. The goals are the issue's, fixed before any
result; each is reported with its numbers whether it holds or not. A goal missed is a
finding, not a reason to change the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARM_LABELS = {
    "untrained": "untrained (random valid action)",
    "random_click": "random click",
    "bc_live": "BC on live-MCTS trajectories",
    "bc_imagined": "BC on world-model-MCTS trajectories",
    "textui_bc_imagined": "TextUI warm-up, then BC (imagined)",
    "bc_imagined_valuable": "BC, imagined valuable only",
    "bc_imagined_valuable_rollback": "BC, imagined valuable + rollback",
    "wmla": "with WMLA look-ahead",
    "greedy": "the WMLA arm's policy, greedy, no look-ahead",
}


@dataclass(frozen=True)
class Goal:
    """One goal of the evidence, the numbers behind it and whether they hold."""

    name: str
    holds: bool | None  # None: not measurable in this run (e.g. nothing imagined)
    detail: str


def goals(results: dict[str, Any]) -> list[Goal]:
    arms, paired = results["arms"], results.get("paired", {})
    out = [
        Goal(
            "train and held-out seeds are disjoint",
            not set(results["train_seeds"]) & set(results["eval_seeds"]),
            f"train {_seeds(results['train_seeds'])}; held-out {_seeds(results['eval_seeds'])}",
        )
    ]
    runs = _headline_runs(results)
    out.append(
        _every_seed(
            "bc_imagined >= 2x untrained and >= +20 points, McNemar p < 0.01",
            [_beats_untrained(run, arms["untrained"]) for run in runs],
        )
    )
    out.append(
        _every_seed("bc_imagined within 10 points of bc_live", [_near_live(run) for run in runs])
    )
    out.append(
        _every_seed(
            ">= 50 % of imagined successes reproduce in the browser",
            [_reproduces(run) for run in runs],
        )
    )
    wmla = arms["wmla"]
    without = arms.get(results.get("wmla_arm", "bc_imagined"), arms["bc_imagined"])
    out.append(
        Goal(
            "wmla >= +5 points over the same policy without it",
            _if_run(wmla["rate"] - without["rate"] >= 0.05, wmla, without),
            f"{_pct(wmla['rate'])} vs {_pct(without['rate'])} "
            f"(McNemar p = {_p((paired.get('wmla_vs_without') or {}).get('p_value'))})"
            + _greedy_control(arms.get("greedy"), paired.get("wmla_vs_greedy")),
        )
    )
    for seed, run in results.get("pipeline_seed_runs", {}).items():
        steps = run.get("real_steps") or {}
        live_steps, imagined_steps = steps.get("bc_live"), steps.get("bc_imagined")
        if live_steps is not None and imagined_steps is not None:
            out.append(
                Goal(
                    f"pipeline seed {seed}: bc_imagined's real steps <= bc_live's",
                    imagined_steps <= live_steps,
                    f"{imagined_steps} vs {live_steps}",
                )
            )
    return out


@dataclass(frozen=True)
class HeadlineRun:
    """One pipeline seed's headline numbers, as the goals read them."""

    label: str  # "seed 1: ", or "" when the run has one pipeline seed
    imagined: dict[str, Any]
    live: dict[str, Any]
    vs_untrained: dict[str, Any] | None
    vs_live: dict[str, Any] | None
    reproduction: dict[str, Any]


def _headline_runs(results: dict[str, Any]) -> list[HeadlineRun]:
    """The headline goals' inputs per pipeline seed: with several seeds a goal holds only if
    it holds on each (one lucky seed is not the method), with one the first seed's arms."""
    arms, paired = results["arms"], results.get("paired", {})
    runs = results.get("pipeline_seed_runs") or {}
    if len(runs) < 2:
        return [
            HeadlineRun(
                "",
                arms["bc_imagined"],
                arms["bc_live"],
                paired.get("bc_imagined_vs_untrained"),
                paired.get("bc_imagined_vs_bc_live"),
                results["reproduction"],
            )
        ]
    return [
        HeadlineRun(
            f"seed {seed}: ",
            _evaluated(run["bc_imagined"]),
            _evaluated(run["bc_live"]),
            run.get("bc_imagined_vs_untrained"),
            run.get("bc_imagined_vs_bc_live"),
            run.get("reproduction")
            or {"imagined_successes": 0, "reproduced": 0, "measured": False},
        )
        for seed, run in runs.items()
    ]


def _evaluated(arm: dict[str, Any]) -> dict[str, Any]:
    """A per-seed arm (a bare interval) marked evaluated when it has episodes."""
    return {**arm, "evaluated": arm.get("episodes", 0) > 0}


def _every_seed(name: str, checks: list[tuple[bool | None, str]]) -> Goal:
    """One goal over the pipeline seeds: missed if missed on one, unmeasured if unmeasured on
    one (and missed on none), else held; the numbers of every seed shown."""
    verdicts = [holds for holds, _ in checks]
    holds = False if False in verdicts else None if None in verdicts else True
    return Goal(name, holds, "; ".join(detail for _, detail in checks))


def _beats_untrained(run: HeadlineRun, base: dict[str, Any]) -> tuple[bool | None, str]:
    imagined, p = run.imagined, (run.vs_untrained or {}).get("p_value")
    gain = imagined["rate"] - base["rate"]
    holds = imagined["rate"] >= 2 * base["rate"] and gain >= 0.20 and p is not None and p < 0.01
    detail = (
        f"{run.label}{_pct(imagined['rate'])} vs {_pct(base['rate'])} "
        f"({gain * 100:+.1f} points, p = {_p(p)})"
    )
    return _if_run(holds and imagined["rate"] > 0, imagined, base), detail


def _near_live(run: HeadlineRun) -> tuple[bool | None, str]:
    gap = run.imagined["rate"] - run.live["rate"]
    detail = (
        f"{run.label}{_pct(run.imagined['rate'])} vs {_pct(run.live['rate'])} "
        f"({gap * 100:+.1f} points, McNemar p = {_p((run.vs_live or {}).get('p_value'))})"
    )
    return _if_run(abs(gap) <= 0.10 or gap > 0, run.imagined, run.live), detail


def _reproduces(run: HeadlineRun) -> tuple[bool | None, str]:
    k, m = run.reproduction["imagined_successes"], run.reproduction["reproduced"]
    if k:
        return m / k >= 0.5, f"{run.label}{m} of {k} ({_pct(m / k)})"
    measured = run.reproduction.get("measured", True)
    why = "the imagined search found none" if measured else "not run yet"
    return None, f"{run.label}{m} of {k}: {why}"


def _greedy_control(greedy: dict[str, Any] | None, vs: dict[str, Any] | None) -> str:
    """WMLA's first candidate is the greedy action: the same policy greedy without look-ahead,
    beside the goal, tells the look-ahead's part from greedy decoding's."""
    if not greedy or not greedy.get("evaluated"):
        return ""
    return f"; greedy, no look-ahead {_pct(greedy['rate'])} (p = {_p(vs and vs['p_value'])})"


def _if_run(holds: bool, *arms: dict[str, Any]) -> bool | None:
    """``holds``, or None (not measured) when one of the arms was not evaluated."""
    return holds if all(arm.get("evaluated", True) for arm in arms) else None


def markdown(results: dict[str, Any], *, command: str, machine: str, plots: dict[str, str]) -> str:
    lines = ["## How it was made", "", "```", command, "```", ""]
    if results.get("wall_time_min") is not None:
        parts = results.get("part_minutes") or {}
        split = (
            f" (stages of part=headline {parts['headline']:.1f} min, part=ablations "
            f"{parts['ablations']:.1f} min)"
            if parts.get("headline") and parts.get("ablations")
            else ""
        )
        lines.append(f"Wall time: {results['wall_time_min']:.1f} min on {machine}{split}.")
    lines += [
        f"Tasks: {', '.join(results['tasks'])}. Training seeds {_seeds(results['train_seeds'])};"
        f" held-out seeds {_seeds(results['eval_seeds'])} x {results['eval_attempts']} attempt(s)"
        f" (never searched, explored or trained on). Pipeline seeds: "
        f"{', '.join(str(s) for s in results['pipeline_seeds'])}.",
        "",
        "## Goals",
        "",
        "| goal | holds | numbers |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {g.name} | {_holds(g.holds)} | {g.detail} |" for g in goals(results)]
    lines += ["", "## Success on held-out episodes (first pipeline seed)", "", _arms_table(results)]
    if "success" in plots:
        lines += ["", f"![success per arm]({plots['success']})"]
    lines += ["", "## Headline arms per pipeline seed", "", _seed_table(results), ""]
    lines += ["## Trajectories the searches gave", "", _trajectory_table(results), ""]
    lines += ["## Imagined successes replayed in the browser", "", _reproduction_table(results)]
    lines += ["", "## World model against copying the page (held-out steps)", ""]
    lines += [_world_table(results)]
    if "world_model" in plots:
        lines += ["", f"![world-model change F1 per action]({plots['world_model']})"]
    lines += ["", "## Reward model and judge on held-out steps", "", _reward_table(results)]
    if results.get("stage_minutes"):
        lines += ["", "## Where the time goes", "", _time_table(results)]
    if results.get("rounds"):
        lines += ["", "## Co-evolution rounds", "", _rounds_table(results)]
        if "rounds" in plots:
            lines += ["", f"![success per round]({plots['rounds']})"]
    return "\n".join(lines) + "\n"


def _arms_table(results: dict[str, Any]) -> str:
    paired = results.get("paired", {})
    rows = ["| arm | successes | rate | Wilson 95 % | vs untrained (McNemar p) |",
            "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for arm, row in results["arms"].items():
        low, high = row["ci95"]
        vs = paired.get(f"{arm}_vs_untrained")
        note = (
            " (not run yet)"
            if not row.get("evaluated", True)
            else f" (= `{row['same_data_as']}`: the same training data)"
            if row.get("same_data_as")
            else ""
            if row.get("trained", True) or arm in ("untrained", "random_click")
            else " (no data: untrained)"
        )
        rows.append(
            f"| {ARM_LABELS.get(arm, arm)} (`{arm}`){note} | {row['successes']}/{row['episodes']} "
            f"| {_pct(row['rate'])} | [{_pct(low)}, {_pct(high)}] | {_p(vs and vs['p_value'])} |"
        )
    return "\n".join(rows)


def _seed_table(results: dict[str, Any]) -> str:
    rows = [
        "| seed | bc_live | bc_imagined | imagined vs live p | real steps live/imagined "
        "| explored episodes (successes) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for seed, run in results.get("pipeline_seed_runs", {}).items():
        live, imagined = run["bc_live"], run["bc_imagined"]
        vs = run.get("bc_imagined_vs_bc_live")
        steps = run.get("real_steps") or {}
        rows.append(
            f"| {seed} | {live['successes']}/{live['episodes']} ({_pct(live['rate'])}) "
            f"| {imagined['successes']}/{imagined['episodes']} ({_pct(imagined['rate'])}) "
            f"| {_p(vs and vs['p_value'])} | {steps.get('bc_live')} / {steps.get('bc_imagined')} "
            f"| {steps.get('explore_episodes_kept')} ({steps.get('explore_successes')}) |"
        )
    return "\n".join(rows)


def _trajectory_table(results: dict[str, Any]) -> str:
    rows = ["| seed | search | valuable | rollback | left out |", "| --- | --- | --- | --- | --- |"]
    for seed, run in results.get("pipeline_seed_runs", {}).items():
        for search, found in (run.get("trajectories") or {}).items():
            if found is None:
                continue
            dropped = ", ".join(f"{k} {n}" for k, n in sorted(found["dropped"].items())) or "-"
            rows.append(
                f"| {seed} | {search} | {found['valuable']} | {found['rollback']} | {dropped} |"
            )
    return "\n".join(rows)


def _reproduction_table(results: dict[str, Any]) -> str:
    rep = results["reproduction"]
    rows = ["| task | imagined successes | reproduced | why not |", "| --- | --- | --- | --- |"]
    for task, row in rep.get("tasks", {}).items():
        why = ", ".join(f"{k} {n}" for k, n in sorted(row.get("why", {}).items())) or "-"
        rows.append(f"| {task} | {row['imagined_successes']} | {row['reproduced']} | {why} |")
    rows.append(f"| all | {rep['imagined_successes']} | {rep['reproduced']} | |")
    return "\n".join(rows)


def _world_table(results: dict[str, Any]) -> str:
    world = results.get("world_model") or {}
    if not world:
        return "No fidelity measured."
    rows = ["| action | n | change F1 model | copy | model - copy (95 %) | page F1 model / copy "
            "| page stayed: kept (n) | page changed: change F1 (n) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    fit = (results.get("world_model_fit") or {}).get("all")
    shown = [*world.items(), *([("all, its own training steps", fit)] if fit else [])]
    for kind, row in shown:
        diff = (row.get("ci95") or {}).get("model_minus_copy")
        margin = f"{row['model'] - row['copy']:+.3f}" + (
            f" [{diff[0]:+.3f}, {diff[1]:+.3f}]" if diff else ""
        )
        split = row.get("by_change") or {}
        stayed, changed = (
            f"{_f(part.get('model_change_f1'))} ({part.get('n')})" if part else "-"
            for part in (split.get("unchanged"), split.get("changed"))
        )
        rows.append(
            f"| {kind} | {row['n']} | {row['model']:.3f} | {row['copy']:.3f} | {margin} "
            f"| {row['page_f1_model']:.3f} / {row['page_f1_copy']:.3f} | {stayed} | {changed} |"
        )
    return "\n".join(rows)


def _reward_table(results: dict[str, Any]) -> str:
    reward = results.get("reward_model") or {}
    if not reward:
        return "No reward model measured."
    rows = [
        f"{reward['steps']} held-out steps, {reward['good']} on a path to a success "
        f"(labelled by the environment); {reward.get('unscored')} got no score (counted low).",
        "",
        "| scorer | ROC AUC | bootstrap 95 % (instances) | sibling pairwise accuracy (pairs) |",
        "| --- | --- | --- | --- |",
    ]
    names = {"model": "reward model", "constant": "constant score",
             "shallower_is_better": "shallower is better"}  # fmt: skip
    for name, label in names.items():
        row = reward[name]
        rows.append(
            f"| {label} | {_f(row['auc'])} | {_interval(row['auc_bootstrap_95'])} "
            f"| {_f(row['sibling_pairwise_accuracy'])} ({row['sibling_pairs']}) |"
        )
    judge = reward.get("judge")
    if judge:
        rows += [
            "",
            f"Judge on {judge['trajectories']} held-out trajectories ({judge['succeeded']} "
            f"succeeded): AUC {_f(judge['auc'])} {_interval(judge['auc_bootstrap_95'])}, "
            f"constant verdict {_f(judge['constant_auc'])}.",
        ]
    return "\n".join(rows)


def _time_table(results: dict[str, Any]) -> str:
    """Minutes per kind of stage (``seed_0/eval_bc_live`` is an ``eval`` stage), largest
    first, then every stage."""
    minutes: dict[str, float] = results["stage_minutes"]
    kinds: dict[str, float] = {}
    for name, spent in minutes.items():
        kind = _stage_kind(name.rsplit("/", 1)[-1])
        kinds[kind] = kinds.get(kind, 0.0) + spent
    total = sum(minutes.values())
    rows = ["| kind of stage | minutes | share |", "| --- | --- | --- |"]
    for kind, spent in sorted(kinds.items(), key=lambda item: -item[1]):
        rows.append(f"| {kind} | {spent:.1f} | {_pct(spent / total if total else None)} |")
    rows += ["", "Every stage, in the order it ran: " + ", ".join(
        f"`{name}` {spent:.1f}" for name, spent in minutes.items()) + " (minutes)."]  # fmt: skip
    return "\n".join(rows)


def _stage_kind(stage: str) -> str:
    if stage in ("untrained", "random_click") or stage.startswith("eval_"):
        return "evaluate held-out episodes"
    if stage.startswith("train_"):
        return "train a policy"
    return {
        "live_search": "MCTS in the browser",
        "imagined_search": "MCTS in the world model",
        "explore": "explore (training seeds)",
        "world_model": "train the world model",
        "reward_model": "train the reward model",
        "reproduce": "replay imagined successes",
        "coevolve": "co-evolution rounds",
        "fidelity": "world-model fidelity",
        "world_model_fit": "world-model fidelity",
        "reward_quality": "reward-model quality",
    }.get(stage, stage)


def _interval(bounds: list[float] | None) -> str:
    return "-" if not bounds else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _rounds_table(results: dict[str, Any]) -> str:
    rows = ["| round | success | world-model change F1 | copy | policy examples |",
            "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in results["rounds"]:
        rows.append(
            f"| {row['round']} | {_pct(row['success_rate'])} | {_f(row['world_model_change_f1'])} "
            f"| {_f(row['copy_change_f1'])} | {row['policy_examples']} |"
        )
    return "\n".join(rows)


# --- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_arms(results: dict[str, Any], path: Path) -> None:
    """Success per arm with its Wilson interval."""
    plt = _pyplot()
    arms = [(arm, row) for arm, row in results["arms"].items() if row.get("evaluated", True)]
    fig, ax = plt.subplots(figsize=(7.2, 3.8), dpi=120)
    rates = [row["rate"] for _, row in arms]
    errors = [[r - row["ci95"][0] for r, (_, row) in zip(rates, arms, strict=True)],
              [row["ci95"][1] - r for r, (_, row) in zip(rates, arms, strict=True)]]  # fmt: skip
    ax.bar(range(len(arms)), rates, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(arms)), [arm for arm, _ in arms], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("success on held-out episodes")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)


def plot_world_model(results: dict[str, Any], path: Path) -> None:
    """Change F1 per action kind, the world model next to copying the page."""
    plt = _pyplot()
    kinds = list((results.get("world_model") or {}).items())
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], [row["model"] for _, row in kinds], 0.4, label="world model")
    ax.bar([x + 0.2 for x in xs], [row["copy"] for _, row in kinds], 0.4, label="copy the page")
    ax.set_xticks(list(xs), [f"{kind}\n(n={row['n']})" for kind, row in kinds], fontsize=7)
    ax.set_ylabel("F1 of what changed")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)


def plot_rounds(results: dict[str, Any], path: Path) -> None:
    """Held-out success per co-evolution round."""
    plt = _pyplot()
    rows = [r for r in results.get("rounds", []) if r.get("success_rate") is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=120)
    ax.plot([r["round"] for r in rows], [r["success_rate"] for r in rows], marker="o")
    base = results["arms"]["untrained"]["rate"]
    ax.axhline(base, color="tab:red", linestyle="--", label="untrained")
    ax.set_xlabel("co-evolution round")
    ax.set_ylabel("success on held-out episodes")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


# --- formatting ------------------------------------------------------------------------------


def _seeds(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _holds(holds: bool | None) -> str:
    return "n/a" if holds is None else ("yes" if holds else "**no**")
