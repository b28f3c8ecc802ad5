"""How well a reward model ranks held-out steps: ROC AUC and pairwise accuracy vs a constant.

MCTS in imagination needs a value signal that orders states: a step on a path to a success
(``good``: labelled ``progress`` or ``success`` by :mod:`websynthesis.training.reward_data`) should
score above one with no success below it. A reward model that scores everything alike (or at
random) gives AUC 0.5; the report puts the model next to that constant score, and next to
"shallower is better" (the step's depth, negated), which shows whether the model learned more
than that a first step is more often on a successful path than a tenth.

- **ROC AUC** (Mann-Whitney): the chance that a good step scores above a bad one, ties
  counting half. Its intervals: Hanley-McNeil's normal approximation, and a bootstrap over
  *instances* (steps of one task instance share a history, so resampling steps alone would
  be too narrow), percentile, seeded.
- **Pairwise accuracy** on the graded labels (1 < 3 < 5 on the default scale): over every
  pair of steps with different labels, the share the model orders like the labels (ties half);
  and the same over *siblings* only (steps from the same earlier steps of one instance: the
  choice MCTS actually makes between children).

A score the model did not give (after the role's retries) counts as ``low``, as the search
values a failed evaluation (``search.failed_reward: null``), and is counted (``unscored``).

The judge is measured the same way on whole trajectories (:func:`evaluate_judge`: AUC for
"succeeded", pairwise accuracy on the verdicts 1/0.5/0, against a constant verdict).

``python -m websynthesis.evaluation.reward_quality --episodes RUN_DIR [--trees RUN_DIR]
[--samples N] [--judge] [--out FILE] [overrides]`` scores the labelled steps (and with
``--judge`` the trajectories) of the held-out run dirs with ``model`` as composed from
conf/evaluate.yaml with the Hydra ``overrides`` (e.g. ``model=qwen2_5_7b
model.adapters.reward=runs/reward_model/adapter``) and writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from websynthesis.roles.client import ModelClient
from websynthesis.training.reward_data import (
    LabelledStep,
    LabelledTrajectory,
    labelled_steps,
    labelled_trajectories,
    read_outcomes,
)

REWARD, JUDGE = "reward", "judge"


# --- pure metrics ------------------------------------------------------------------------


def _midranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _wins(high: Sequence[float], low: Sequence[float]) -> float:
    """Pairs (h, l) with h > l, ties counting half (the Mann-Whitney U of ``high``)."""
    ranks = _midranks([*high, *low])
    n = len(high)
    return sum(ranks[:n]) - n * (n + 1) / 2


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties half; needs both classes."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        raise ValueError("AUC needs at least one positive and one negative")
    return _wins(positives, negatives) / (len(positives) * len(negatives))


def pairwise_accuracy(
    scores: Sequence[float],
    grades: Sequence[float],
    groups: Sequence[Hashable] | None = None,
) -> tuple[float | None, int]:
    """The share of pairs with different ``grades`` (within one of ``groups``, when given) the
    scores order the same way, ties half; and how many pairs. ``None`` without any pair."""
    if len(scores) != len(grades) or (groups is not None and len(groups) != len(scores)):
        raise ValueError("scores, grades and groups must have one entry per step")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i in range(len(scores)):
        members[None if groups is None else groups[i]].append(i)
    wins, pairs = 0.0, 0
    for indices in members.values():
        by_grade: dict[float, list[float]] = defaultdict(list)
        for i in indices:
            by_grade[grades[i]].append(scores[i])
        levels = sorted(by_grade)
        for a, lower in enumerate(levels):
            for upper in levels[a + 1 :]:
                wins += _wins(by_grade[upper], by_grade[lower])
                pairs += len(by_grade[upper]) * len(by_grade[lower])
    return (wins / pairs if pairs else None), pairs


def hanley_mcneil(
    auc: float, positives: int, negatives: int, z: float = 1.96
) -> tuple[float, float]:
    """Hanley & McNeil's (1982) normal interval for an AUC, clipped to [0, 1]."""
    if positives < 1 or negatives < 1:
        raise ValueError("the interval needs at least one positive and one negative")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def bootstrap_auc(
    scores: Sequence[float],
    labels: Sequence[bool],
    clusters: Sequence[Hashable] | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of the AUC over resampled ``clusters`` (default: each step its
    own), seeded. A resample with one class only has no AUC and is left out; ``None`` when
    fewer than half the resamples had both classes."""
    clusters = list(range(len(scores))) if clusters is None else list(clusters)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, cluster in enumerate(clusters):
        members[cluster].append(i)
    keys = list(members)
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        drawn = [i for _ in keys for i in members[keys[rng.randrange(len(keys))]]]
        ys = [labels[i] for i in drawn]
        if all(ys) or not any(ys):
            continue
        values.append(roc_auc([scores[i] for i in drawn], ys))
    if len(values) < resamples / 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    low = values[math.floor(tail * (len(values) - 1))]
    high = values[math.ceil((1 - tail) * (len(values) - 1))]
    return low, high


def ranking_report(
    scores: Sequence[float],
    steps: Sequence[LabelledStep],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC (with both intervals) and pairwise accuracies of ``scores`` on ``steps``, next to
    the constant score and to "shallower is better" on the same steps."""
    if len(scores) != len(steps):
        raise ValueError(f"{len(scores)} scores for {len(steps)} steps")
    labels = [step.good for step in steps]
    positives, negatives = sum(labels), len(labels) - sum(labels)
    report: dict[str, Any] = {
        "steps": len(steps),
        "good": positives,
        "bad": negatives,
        "labels": _histogram(step.score for step in steps),
        "instances": len({step.record.instance for step in steps}),
    }
    depths = [-float(len(step.record.actions)) for step in steps]
    for name, values in (
        ("model", list(scores)),
        ("constant", [0.0] * len(steps)),
        ("shallower_is_better", depths),
    ):
        report[name] = _ranking(values, steps, resamples=resamples, seed=seed)
    return report


def _ranking(
    scores: Sequence[float], steps: Sequence[LabelledStep], *, resamples: int, seed: int
) -> dict[str, Any]:
    labels = [step.good for step in steps]
    grades = [step.score for step in steps]
    siblings = [(step.record.instance, step.record.actions[:-1]) for step in steps]
    accuracy, pairs = pairwise_accuracy(scores, grades)
    sibling_accuracy, sibling_pairs = pairwise_accuracy(scores, grades, siblings)
    return _auc(scores, labels, [step.record.instance for step in steps], resamples, seed) | {
        "pairwise_accuracy": accuracy,
        "pairs": pairs,
        "sibling_pairwise_accuracy": sibling_accuracy,
        "sibling_pairs": sibling_pairs,
    }


def _auc(
    scores: Sequence[float],
    labels: Sequence[bool],
    clusters: Sequence[Hashable],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """ROC AUC with its Hanley-McNeil and cluster-bootstrap intervals (all None when the
    labels hold one class only)."""
    out: dict[str, Any] = {"auc": None, "auc_hanley_mcneil_95": None, "auc_bootstrap_95": None}
    if any(labels) and not all(labels):
        auc, good = roc_auc(scores, labels), sum(labels)
        boot = bootstrap_auc(scores, labels, clusters, resamples=resamples, seed=seed)
        out["auc"] = auc
        out["auc_hanley_mcneil_95"] = list(hanley_mcneil(auc, good, len(labels) - good))
        out["auc_bootstrap_95"] = None if boot is None else list(boot)
    return out


def _histogram(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[f"{float(value):g}"] += 1
    return dict(sorted(counts.items()))


# --- asking the model --------------------------------------------------------------------


async def score_steps(
    client: ModelClient, steps: Sequence[LabelledStep], *, samples: int = 1, role: str = REWARD
) -> tuple[list[float], int]:
    """The mean parsed score of ``samples`` answers per step (one batched call), and how many
    steps got none (scored ``low``, as the search values a failed evaluation)."""
    low = client.role(role).settings.scale.low
    rows = await client.sample(role, [step.record.question for step in steps], n=samples)
    scores, unscored = [], 0
    for row in rows:
        values = [o.value.score for o in row if o.ok and o.value is not None]
        if values:
            scores.append(sum(values) / len(values))
        else:
            scores.append(low)
            unscored += 1
    return scores, unscored


async def evaluate_reward_model(
    client: ModelClient,
    steps: Sequence[LabelledStep],
    *,
    samples: int = 1,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``steps`` with the client's reward role; the :func:`ranking_report` of it."""
    if not steps:
        raise ValueError("no labelled steps to evaluate the reward model on")
    scores, unscored = await score_steps(client, steps, samples=samples)
    report = ranking_report(scores, steps, resamples=resamples, seed=seed)
    report["unscored"] = unscored
    report["samples"] = samples
    report["scores"] = _histogram(scores)
    return report


async def evaluate_judge(
    client: ModelClient,
    trajectories: Sequence[LabelledTrajectory],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The judge's verdicts on whole held-out trajectories: AUC for "succeeded" (verdict 1),
    pairwise accuracy on the verdicts (1, 0.5, 0), next to a constant verdict. A verdict the
    judge did not give counts as 0."""
    if not trajectories:
        raise ValueError("no labelled trajectories to evaluate the judge on")
    outcomes = await client.run(JUDGE, [t.record.question for t in trajectories])
    scores = [o.value.score if o.ok and o.value is not None else 0.0 for o in outcomes]
    labels = [t.verdict == 1.0 for t in trajectories]
    grades = [t.verdict for t in trajectories]
    clusters = [t.record.instance for t in trajectories]
    report: dict[str, Any] = {
        "trajectories": len(trajectories),
        "succeeded": sum(labels),
        "verdicts": _histogram(grades),
        "unscored": sum(not o.ok for o in outcomes),
        "scores": _histogram(scores),
    }
    for name, values in (("model", scores), ("constant", [0.0] * len(scores))):
        accuracy, pairs = pairwise_accuracy(values, grades)
        report[name] = _auc(values, labels, clusters, resamples, seed) | {
            "pairwise_accuracy": accuracy,
            "pairs": pairs,
        }
    return report


def quality_report(
    client: ModelClient,
    episodes: Sequence[Path | str],
    trees: Sequence[Path | str] = (),
    *,
    samples: int = 1,
    resamples: int = 1000,
    seed: int = 0,
    judge: bool = False,
    unresolved: str = "skip",
) -> dict[str, Any]:
    """The reward role's ranking of the labelled steps of ``episodes`` (evaluate.py run dirs)
    and ``trees`` (synthesize.py run dirs), and with ``judge`` the judge's of their whole
    trajectories: the report :func:`main` writes, and the learning evidence's stage."""
    outcomes = read_outcomes(episodes, trees)
    steps = labelled_steps(outcomes, client.role(REWARD).settings.scale, unresolved=unresolved)
    report = asyncio.run(
        evaluate_reward_model(client, steps, samples=samples, resamples=resamples, seed=seed)
    )
    if judge:
        report["judge"] = asyncio.run(
            evaluate_judge(client, labelled_trajectories(outcomes), resamples=resamples, seed=seed)
        )
    report["sources"] = {"episodes": [str(e) for e in episodes], "trees": [str(t) for t in trees]}
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", action="append", default=[], help="evaluate.py run dir")
    parser.add_argument("--trees", action="append", default=[], help="synthesize.py run dir")
    parser.add_argument("--samples", type=int, default=1, help="answers averaged per step")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--unresolved", default="skip", choices=["skip", "low"])
    parser.add_argument("--judge", action="store_true", help="also the judge's trajectories")
    parser.add_argument("--out", default="reward_quality.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    args = parser.parse_args(argv)
    if not args.episodes and not args.trees:
        parser.error("give --episodes and/or --trees")

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from websynthesis.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=list(args.overrides))
    GlobalHydra.instance().clear()
    client = ModelClient.from_config(cfg.model)
    try:
        report = quality_report(
            client,
            args.episodes,
            args.trees,
            samples=args.samples,
            resamples=args.resamples,
            seed=int(cfg.seed),
            judge=args.judge,
            unresolved=args.unresolved,
        )
    finally:
        client.close()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("steps", "good", "bad", "model")}, indent=2))
    return report


if __name__ == "__main__":
    main()
