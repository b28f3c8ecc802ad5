"""World-model fidelity on held-out real transitions, next to the copy-the-page baseline.

For every real ``(observation, action, next_observation)`` the world model predicts the next
page, and the prediction is scored against the real one:

- ``str_valid``: the prediction is a tree with no structural errors (WebSynthesis/WebEvolver STR);
- ``f1_id`` / ``f1_content``: element F1 with ids (id, role, name) and without (role, name);
- ``id_preservation``: of the elements the action left unchanged, the fraction the prediction
  keeps at their id (undefined, and left out of the mean, when nothing stayed unchanged);
- ``change_f1``: F1 of the predicted change (added, removed, changed elements relative to the
  current page) against the real change. Most of a page does not change, so page-level F1
  rewards copying; this is the number that says whether the model knows what an action does;
- ``text_similarity``: difflib's ratio over the rendered lines (line-level: character-level
  matching is quadratic on 16k-character pages).

The baseline predicts the current page unchanged, on the same transitions: a model that does
not beat it on ``change_f1`` has learnt to copy. ``by_change`` splits the model's
``change_f1`` between the steps that left the page as it was and those that changed it,
which tells a model that invents changes from one that misses them. A prediction with no tree
in it scores 0 everywhere and is counted by failure kind; a malformed tree is scored as read
(``str_valid`` 0)."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websynthesis.data.transitions import Transition, read_transitions
from websynthesis.evaluation.significance import bootstrap_mean
from websynthesis.roles.client import ModelClient
from websynthesis.roles.prompts import WorldModelInput
from websynthesis.web.observation import AXTree, Score, compare_trees, diff_trees, parse_axtree

METRICS = ("str_valid", "f1_id", "f1_content", "id_preservation", "change_f1", "text_similarity")


def load_transitions(path: Path | str, limit: int | None = None) -> tuple[list[Transition], int]:
    """The real transitions of a transitions file (up to ``limit``), and how many imagined
    ones were skipped: a world model is measured against what a browser did."""
    real: list[Transition] = []
    imagined = 0
    for transition in read_transitions(path):
        if transition.imagined:
            imagined += 1
        elif limit is None or len(real) < limit:
            real.append(transition)
    return real, imagined


@dataclass(frozen=True)
class FidelityScores:
    """The metrics of one prediction (see the module docstring)."""

    str_valid: float
    f1_id: float
    f1_content: float
    id_preservation: float | None
    change_f1: float
    text_similarity: float


FAILED = FidelityScores(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def score_prediction(predicted: AXTree, before: AXTree, after: AXTree) -> FidelityScores:
    """Score ``predicted`` as the page after ``before`` (the real one being ``after``)."""
    match = compare_trees(predicted, after)
    return FidelityScores(
        str_valid=float(predicted.is_valid),
        f1_id=match.with_id.f1,
        f1_content=match.without_id.f1,
        id_preservation=id_preservation(predicted, before, after),
        change_f1=_multiset_f1(_change_keys(before, predicted), _change_keys(before, after)),
        text_similarity=difflib.SequenceMatcher(
            None, predicted.render().splitlines(), after.render().splitlines(), autojunk=False
        ).ratio(),
    )


def id_preservation(predicted: AXTree, before: AXTree, after: AXTree) -> float | None:
    """Fraction of elements the real step left unchanged that ``predicted`` keeps at their id."""
    diff = diff_trees(before, after)
    touched = {id(node) for node in diff.removed} | {id(c.before) for c in diff.changed}
    unchanged = [n for n in before.nodes if n.id is not None and id(n) not in touched]
    if not unchanged:
        return None
    kept = {(n.id, n.role, n.name) for n in predicted.nodes}
    return sum((n.id, n.role, n.name) in kept for n in unchanged) / len(unchanged)


def _change_keys(before: AXTree, after: AXTree) -> Counter[Hashable]:
    """The change from ``before`` to ``after`` as comparable items (new elements by content)."""
    diff = diff_trees(before, after)
    keys: Counter[Hashable] = Counter(("+", n.role, n.name) for n in diff.added)
    keys.update(("-", n.id, n.role, n.name) for n in diff.removed)
    keys.update(
        ("~", c.after.id, c.after.role, c.after.name, tuple(sorted(c.after.props.items())))
        for c in diff.changed
    )
    return keys


def _multiset_f1(predicted: Counter[Hashable], reference: Counter[Hashable]) -> float:
    matched = sum((predicted & reference).values())
    return Score.from_counts(matched, predicted.total(), reference.total()).f1


def aggregate(scores: Sequence[FidelityScores]) -> dict[str, Any]:
    """Means of every metric; ``id_preservation`` over the transitions where it is defined."""
    rows = [asdict(s) for s in scores]
    result: dict[str, Any] = {"transitions": len(rows)}
    for metric in METRICS:
        values = [row[metric] for row in rows if row[metric] is not None]
        result[metric] = sum(values) / len(values) if values else None
    result["id_preservation_defined"] = sum(row["id_preservation"] is not None for row in rows)
    return result


async def predict(
    client: ModelClient,
    transitions: Sequence[Transition],
    batch: int,
    role: str = "world_model",
) -> tuple[list[AXTree | None], Counter[str]]:
    """The world model's page for each transition (``None`` without one), failures by kind."""
    predictions: list[AXTree | None] = []
    failures: Counter[str] = Counter()
    for start in range(0, len(transitions), max(1, batch)):
        chunk = transitions[start : start + max(1, batch)]
        inputs = [WorldModelInput(parse_axtree(t.observation), t.action, t.history) for t in chunk]
        for outcome in await client.run(role, inputs):
            if outcome.failure is not None:
                failures[str(outcome.failure)] += 1
            predictions.append(outcome.value)
    return predictions, failures


def fidelity_report(
    transitions: Sequence[Transition], predictions: Iterable[AXTree | None]
) -> dict[str, Any]:
    """The model's aggregate and the copy baseline's, on the same transitions, overall and
    by action kind (``by_action``: which actions the model knows the effect of)."""
    model, baseline = [], []
    kinds: dict[str, list[int]] = {}
    for index, (t, predicted) in enumerate(zip(transitions, predictions, strict=True)):
        before, after = parse_axtree(t.observation), parse_axtree(t.next_observation)
        model.append(FAILED if predicted is None else score_prediction(predicted, before, after))
        baseline.append(score_prediction(before, before, after))
        kinds.setdefault(t.action.kind.value, []).append(index)
    by_action = {
        kind: _scored([model[i] for i in indices], [baseline[i] for i in indices])
        for kind, indices in sorted(kinds.items())
    }
    return _scored(model, baseline) | {"by_action": by_action}


def _scored(model: Sequence[FidelityScores], baseline: Sequence[FidelityScores]) -> dict[str, Any]:
    """The model's and copying's aggregates on the same transitions, with the change F1's
    intervals and its split by whether the page changed."""
    return {
        "model": aggregate(model),
        "copy_baseline": aggregate(baseline),
        "change_f1_ci95": _change_f1_intervals(model, baseline),
        "by_change": _by_change(model, baseline),
    }


def _by_change(
    model: Sequence[FidelityScores], baseline: Sequence[FidelityScores]
) -> dict[str, dict[str, Any]]:
    """The model's change F1 apart on the steps that left the page as it was and on those
    that changed it: on the first it is the share of pages the model kept unchanged (copying
    scores 1 there), on the second how much of the real change it predicted (copying scores
    0). Which of the two the model loses on says whether it invents changes or misses them.
    Copying's change F1 is 1 exactly where the real change is empty, which is the split."""
    split: dict[str, list[float]] = {"unchanged": [], "changed": []}
    for ours, copied in zip(model, baseline, strict=True):
        split["unchanged" if copied.change_f1 == 1.0 else "changed"].append(ours.change_f1)
    return {
        name: {"n": len(values), "model_change_f1": sum(values) / len(values) if values else None}
        for name, values in split.items()
    }


def _change_f1_intervals(
    model: Sequence[FidelityScores], baseline: Sequence[FidelityScores]
) -> dict[str, list[float] | None]:
    """Bootstrap 95 % intervals of the model's and copying's mean change F1 and of their
    paired difference (the same transitions): the difference's interval above 0 is what
    "beats copying" means."""

    def interval(values: list[float]) -> list[float] | None:
        found = bootstrap_mean(values)
        return None if found is None else [round(found[1], 4), round(found[2], 4)]

    ours = [s.change_f1 for s in model]
    copied = [s.change_f1 for s in baseline]
    return {
        "model": interval(ours),
        "copy_baseline": interval(copied),
        "model_minus_copy": interval([a - b for a, b in zip(ours, copied, strict=True)]),
    }


async def evaluate_fidelity(
    client: ModelClient, transitions: Sequence[Transition], batch: int = 16
) -> dict[str, Any]:
    """Predict every transition and report it next to the baseline, with failure counts."""
    predictions, failures = await predict(client, transitions, batch)
    report = fidelity_report(transitions, predictions)
    report["failures"] = dict(sorted(failures.items()))
    report["no_prediction"] = sum(p is None for p in predictions)
    return report
