"""The arms of the learning evidence, and the numbers a run gives for them.

:func:`results` reads a run dir of :mod:`websynthesis.pipelines.evidence` (its stage dirs and
``state.json``) and returns what ``results.json`` holds: every arm's successes on the shared
held-out episodes with Wilson intervals and paired McNemar p-values, the reproduction rate of
imagined successes, real environment steps, world-model fidelity by action kind, reward-model
quality and the co-evolution rounds. It reads only finished stages, so it can run on a run
that is still going (``report_only=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from websynthesis.evaluation.significance import mcnemar, wilson
from websynthesis.pipelines.stages import read_json

ARMS = (
    "untrained",
    "random_click",
    "bc_live",
    "bc_imagined",
    "textui_bc_imagined",
    "bc_imagined_valuable",
    "bc_imagined_valuable_rollback",
    "wmla",
    "greedy",
)
HEADLINE = ("bc_imagined", "bc_live")  # the paper's arm first: a stopped run has it
ABLATION_ARMS = ("bc_imagined_valuable", "textui_bc_imagined")  # then wmla and the rounds
# What each trained arm learns from: (search stage, trajectory kinds, curriculum).
POLICY_DATA = {
    "bc_live": ("live_search", ("valuable", "rollback"), "bc_only"),
    "bc_imagined": ("imagined_search", ("valuable", "rollback"), "bc_only"),
    "bc_imagined_valuable": ("imagined_search", ("valuable",), "bc_only"),
    "textui_bc_imagined": ("imagined_search", ("valuable", "rollback"), "textui_then_bc"),
}
ALIASES = {"bc_imagined_valuable_rollback": "bc_imagined"}  # the paper's data is bc_imagined's
# Evaluated on ``wmla.arm``'s policy: with look-ahead, and greedy without it (its control).
ON_WMLA_POLICY = ("wmla", "greedy")


def _outcomes(run_dir: Path) -> dict[tuple[str, int, int], bool]:
    from websynthesis.data.episodes import latest_episodes

    path = run_dir / "episodes.jsonl"
    if not path.is_file():
        return {}
    return {
        key: bool(record.get("success"))
        for key, record in latest_episodes(path).items()
        if record.get("error") is None
    }


def results(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Every arm's successes with Wilson intervals and paired McNemar p-values, the
    reproduction rate, real steps, world-model fidelity by action kind, and the rounds."""
    seeds = [int(seed) for seed in cfg.pipeline_seeds]
    first = seeds[0]

    state = read_json(out / "state.json", None)
    finished = None if state is None else {out / name for name in state["done"]}

    def arm_dir(arm: str, seed: int) -> Path:
        if arm in ("untrained", "random_click"):
            path = out / arm
        elif arm in ON_WMLA_POLICY:
            path = out / f"seed_{seed}" / f"eval_{arm}"
        else:
            path = out / f"seed_{seed}" / f"eval_{ALIASES.get(arm, arm)}"
        # A stage still running (the report read mid-run) has part of its episodes: not yet.
        return path if finished is None or path in finished else out / "not_finished"

    def trained(arm: str, seed: int) -> bool:
        if arm in ("untrained", "random_click"):
            return False
        name = str(cfg.wmla.arm) if arm in ON_WMLA_POLICY else ALIASES.get(arm, arm)
        return not (out / f"seed_{seed}" / f"train_{name}" / "skipped.json").is_file()

    outcomes = {arm: _outcomes(arm_dir(arm, first)) for arm in ARMS}
    arms: dict[str, Any] = {}
    for arm in ARMS:
        found = outcomes[arm]
        rate = wilson(sum(found.values()), len(found))
        # evaluated: false where the arm's stage has not run (e.g. part=headline alone)
        arms[arm] = rate.to_dict() | {"trained": trained(arm, first), "evaluated": bool(found)}
        data = ALIASES.get(arm, str(cfg.wmla.arm) if arm in ON_WMLA_POLICY else arm)
        if data in POLICY_DATA:
            train_dir = out / f"seed_{first}" / f"train_{data}"
            arms[arm]["training_examples"] = read_json(train_dir / "policy_data.json", {}).get(
                "examples"
            )
            # trained on byte-identical data to an earlier arm: that arm's adapter and episodes
            same = read_json(train_dir / "same_as.json", None)
            arms[arm]["same_data_as"] = None if same is None else same["arm"]
    untrained = outcomes["untrained"]
    paired: dict[str, Any] = {}
    for arm in ARMS:
        if arm != "untrained" and outcomes[arm] and untrained:
            paired[f"{arm}_vs_untrained"] = mcnemar(outcomes[arm], untrained).to_dict()
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        live, imagined = (
            _outcomes(arm_dir("bc_live", seed)),
            _outcomes(arm_dir("bc_imagined", seed)),
        )
        row = {
            arm: wilson(sum(o.values()), len(o)).to_dict()
            for arm, o in (("bc_live", live), ("bc_imagined", imagined))
        }
        if live and imagined:
            row["bc_imagined_vs_bc_live"] = mcnemar(imagined, live).to_dict()
        if imagined and untrained:
            row["bc_imagined_vs_untrained"] = mcnemar(imagined, untrained).to_dict()
        row["reproduction"] = read_json(
            out / f"seed_{seed}" / "reproduce" / "reproduction.json", None
        )
        row["real_steps"] = _real_steps(out / f"seed_{seed}")
        row["trajectories"] = {
            search: _trajectories(out / f"seed_{seed}" / search / "stats.json")
            for search in ("live_search", "imagined_search")
        }
        per_seed[str(seed)] = row
    if outcomes["bc_live"] and outcomes["bc_imagined"]:
        paired["bc_imagined_vs_bc_live"] = mcnemar(
            outcomes["bc_imagined"], outcomes["bc_live"]
        ).to_dict()
    if outcomes["wmla"] and outcomes[str(cfg.wmla.arm)]:
        paired["wmla_vs_without"] = mcnemar(outcomes["wmla"], outcomes[str(cfg.wmla.arm)]).to_dict()
    if outcomes["wmla"] and outcomes["greedy"]:  # look-ahead apart from greedy decoding
        paired["wmla_vs_greedy"] = mcnemar(outcomes["wmla"], outcomes["greedy"]).to_dict()
    minutes = {
        name: round(seconds / 60, 2) for name, seconds in (state or {}).get("seconds", {}).items()
    }
    ablations = {"coevolve", f"seed_{first}/eval_wmla", f"seed_{first}/eval_greedy"} | {
        f"seed_{first}/{kind}_{arm}" for arm in ABLATION_ARMS for kind in ("train", "eval")
    }
    reproduction = per_seed[str(first)]["reproduction"] or {
        "imagined_successes": 0,
        "reproduced": 0,
    }
    return {
        "tasks": list(cfg.tasks),
        "train_seeds": list(cfg.train_seeds),
        "eval_seeds": list(cfg.eval_seeds),
        "pipeline_seeds": seeds,
        "eval_attempts": int(cfg.eval_attempts),
        "wmla_arm": str(cfg.wmla.arm),
        "wall_time_min": None,  # the script adds it (it sees every session)
        "arms": arms,
        "paired": paired,
        "pipeline_seed_runs": per_seed,
        "reproduction": {
            "imagined_successes": reproduction["imagined_successes"],
            "reproduced": reproduction["reproduced"],
            "tasks": reproduction.get("tasks", {}),
            "measured": per_seed[str(first)]["reproduction"] is not None,
        },
        "world_model": _world_model(out / f"seed_{first}" / "fidelity" / "fidelity.json"),
        "world_model_fit": _world_model(
            out / f"seed_{first}" / "world_model_fit" / "fidelity.json"
        ),
        "reward_model": _reward_model(
            out / f"seed_{first}" / "reward_quality" / "reward_quality.json"
        ),
        "rounds": _rounds(out / "coevolve" / "metrics.json"),
        "stage_minutes": minutes,
        "part_minutes": {
            "headline": round(sum(m for n, m in minutes.items() if n not in ablations), 1),
            "ablations": round(sum(m for n, m in minutes.items() if n in ablations), 1),
        },
    }


def _real_steps(seed_dir: Path) -> dict[str, Any]:
    budget = read_json(seed_dir / "real_data" / "budget.json", {})
    return {
        "bc_live": budget.get("budget"),
        "bc_imagined": budget.get("real_steps"),
        "explore_episodes_kept": budget.get("episodes"),
        "explore_episodes_left_out": budget.get("left_out"),
        "explore_successes": budget.get("successes"),
    }


def _trajectories(stats: Path) -> dict[str, Any] | None:
    """What a search's extraction kept (valuable, rollback) and what it left out, and why
    (e.g. every rollback where the environment declares no ``go_back``)."""
    examples = read_json(stats, {}).get("examples")
    if examples is None:
        return None
    return {
        "valuable": examples.get("valuable", 0),
        "rollback": examples.get("rollback", 0),
        "dropped": examples.get("dropped", {}),
    }


def _world_model(path: Path) -> dict[str, Any]:
    """Change F1 per action kind, the model's and copying's, with counts and intervals, and
    the whole-page F1 beside them."""
    report = read_json(path, None)
    if report is None or "by_action" not in report:
        return {}
    shown = {kind: _kind_row(row) for kind, row in report["by_action"].items()}
    shown["all"] = _kind_row(report)
    return shown


def _kind_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": row["model"]["change_f1"],
        "copy": row["copy_baseline"]["change_f1"],
        "n": row["model"]["transitions"],
        "ci95": row.get("change_f1_ci95"),
        "page_f1_model": row["model"]["f1_content"],
        "page_f1_copy": row["copy_baseline"]["f1_content"],
        # the model apart on steps that left the page as it was and on those that changed it
        # (absent from a fidelity.json written before the split was measured)
        "by_change": row.get("by_change"),
    }


def _reward_model(path: Path) -> dict[str, Any]:
    """The reward model's and the judge's AUC on held-out steps / trajectories, with the
    constant score's and "shallower is better"'s beside them."""
    report = read_json(path, None)
    if report is None:
        return {}
    shown: dict[str, Any] = {
        "steps": report["steps"],
        "good": report["good"],
        "unscored": report.get("unscored"),
    }
    for name in ("model", "constant", "shallower_is_better"):
        row = report[name]
        shown[name] = {
            "auc": row["auc"],
            "auc_bootstrap_95": row["auc_bootstrap_95"],
            "sibling_pairwise_accuracy": row["sibling_pairwise_accuracy"],
            "sibling_pairs": row["sibling_pairs"],
        }
    judge = report.get("judge")
    if judge is not None:
        shown["judge"] = {
            "trajectories": judge["trajectories"],
            "succeeded": judge["succeeded"],
            "auc": judge["model"]["auc"],
            "auc_bootstrap_95": judge["model"]["auc_bootstrap_95"],
            "constant_auc": judge["constant"]["auc"],
        }
    return shown


def _rounds(path: Path) -> list[dict[str, Any]]:
    metrics = read_json(path, None)
    if metrics is None:
        return []
    rows = []
    for index, row in sorted(metrics.get("rounds", {}).items(), key=lambda item: int(item[0])):
        fidelity = row.get("fidelity") or {}
        rows.append(
            {
                "round": int(index),
                "success_rate": row.get("success_rate"),
                "world_model_change_f1": (fidelity.get("model") or {}).get("change_f1"),
                "copy_change_f1": (fidelity.get("copy_baseline") or {}).get("change_f1"),
                "policy_examples": (row.get("policy_data") or {}).get("examples"),
            }
        )
    return rows
