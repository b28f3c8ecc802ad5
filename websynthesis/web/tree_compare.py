"""Comparing two trees: element-level precision/recall/F1, and what changed between them.

:func:`compare_trees` scores a predicted page (world-model output) against the real
one; :func:`diff_trees` explains what an action changed, for action histories and for
scoring world models on the change rather than on the mostly unchanged page.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ax_node import AXNode
    from .observation import AXTree


@dataclass(frozen=True, slots=True)
class Score:
    """Precision, recall and F1 of one multiset match, with the counts behind them.

    An empty side scores 1.0 when the other side is empty too, else 0.0.
    """

    precision: float
    recall: float
    f1: float
    matched: int
    predicted: int
    reference: int

    @classmethod
    def from_counts(cls, matched: int, predicted: int, reference: int) -> Score:
        precision = matched / predicted if predicted else float(reference == 0)
        recall = matched / reference if reference else float(predicted == 0)
        total = precision + recall
        f1 = 2 * precision * recall / total if total else 0.0
        return cls(precision, recall, f1, matched, predicted, reference)


@dataclass(frozen=True, slots=True)
class TreeMatch:
    """Element match of a prediction against a reference.

    ``with_id`` counts (id, role, name) triples: the element must sit at the same id.
    ``without_id`` counts (role, name) pairs: right content, whatever the ids.
    Names are compared exactly (decoded); props are ignored.
    """

    with_id: Score
    without_id: Score


def _multiset_score(predicted: Counter[Hashable], reference: Counter[Hashable]) -> Score:
    matched = sum((predicted & reference).values())
    return Score.from_counts(matched, predicted.total(), reference.total())


def compare_trees(pred: AXTree, ref: AXTree) -> TreeMatch:
    """Score ``pred`` against ``ref`` element by element."""
    pred_ids = Counter((node.id, node.role, node.name) for node in pred.nodes)
    ref_ids = Counter((node.id, node.role, node.name) for node in ref.nodes)
    pred_content = Counter((node.role, node.name) for node in pred.nodes)
    ref_content = Counter((node.role, node.name) for node in ref.nodes)
    return TreeMatch(_multiset_score(pred_ids, ref_ids), _multiset_score(pred_content, ref_content))


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One element present in both trees whose ``fields`` (role/name/props) differ."""

    before: AXNode
    after: AXNode
    fields: tuple[str, ...]

    def render(self) -> str:
        """``~ [5] textbox 'Query': name 'Search' -> 'Query'; +focused: True``."""
        old, new = self.before, self.after
        details = []
        if "role" in self.fields:
            details.append(f"role {old.role} -> {new.role}")
        if "name" in self.fields:
            details.append(f"name {old.name!r} -> {new.name!r}")
        if "props" in self.fields:
            details += _prop_changes(old.props, new.props)
        return f"~ {new.body()}: {'; '.join(details)}"


def _prop_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changes = []
    for key in dict.fromkeys([*old, *new]):
        if key not in new:
            changes.append(f"-{key}: {old[key]}")
        elif key not in old:
            changes.append(f"+{key}: {new[key]}")
        elif old[key] != new[key]:
            changes.append(f"{key}: {old[key]} -> {new[key]}")
    return changes


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """Elements removed from, added to, and changed between two trees.

    ``removed`` is in the old tree's order, ``added`` and ``changed`` in the new one's.
    """

    added: tuple[AXNode, ...]
    removed: tuple[AXNode, ...]
    changed: tuple[NodeChange, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def render(self) -> str:
        """One line per difference (``-`` removed, ``+`` added, ``~`` changed); ``""`` if none."""
        lines = [f"- {node.body()}" for node in self.removed]
        lines += [f"+ {node.body()}" for node in self.added]
        lines += [change.render() for change in self.changed]
        return "\n".join(lines)


def _match_key(node: AXNode) -> tuple[str | None, ...]:
    # Id-less elements (BrowserGym StaticText) can only be matched by their content.
    return ("id", node.id) if node.id is not None else ("content", node.role, node.name)


def _changed_fields(before: AXNode, after: AXNode) -> tuple[str, ...]:
    fields = []
    if before.role != after.role:
        fields.append("role")
    if before.name != after.name:
        fields.append("name")
    if before.props != after.props:
        fields.append("props")
    return tuple(fields)


def diff_trees(before: AXTree, after: AXTree) -> TreeDiff:
    """What changed from ``before`` to ``after``, matching elements by id.

    Repeated ids are paired in document order; id-less elements are paired by
    (role, name), so for them only props can change.
    """
    pool: defaultdict[tuple[str | None, ...], deque[AXNode]] = defaultdict(deque)
    for node in before.nodes:
        pool[_match_key(node)].append(node)
    added: list[AXNode] = []
    changed: list[NodeChange] = []
    for node in after.nodes:
        candidates = pool.get(_match_key(node))
        if not candidates:
            added.append(node)
            continue
        old = candidates.popleft()
        fields = _changed_fields(old, node)
        if fields:
            changed.append(NodeChange(old, node, fields))
    left = {node for queue in pool.values() for node in queue}
    removed = tuple(node for node in before.nodes if node in left)
    return TreeDiff(tuple(added), removed, tuple(changed))
