"""What a finished tree search hands back: the tree, why it stopped, and what it found.

The whole tree is kept (the training-data builders read rewards, reasons and
failed branches, not only the winning path) and dumps to one JSON object, one
line of ``trees.jsonl``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Generic

from websynthesis.search.interfaces import A, S
from websynthesis.search.node import Codec, Node, tree_from_list, tree_to_list
from websynthesis.search.settings import SearchSettings


class StopReason(StrEnum):
    """Why a tree stopped starting iterations."""

    ITERATIONS = "iterations"
    TIME = "time"
    BUDGET = "budget"
    SOLVED = "solved"
    ERROR = "error"


@dataclass
class TreeStats:
    """Counts of what one tree did.

    ``expansions``, ``nodes`` and ``dead_ends`` are about the tree; the others
    include rollouts (whose nodes are not kept).
    """

    expansions: int = 0
    nodes: int = 0
    dead_ends: int = 0
    proposals: int = 0
    invalid_proposals: int = 0
    duplicate_proposals: int = 0
    world_steps: int = 0
    failed_world_steps: int = 0
    evaluations: int = 0
    failed_evaluations: int = 0
    rollout_steps: int = 0


@dataclass
class SearchResult(Generic[S, A]):
    """One tree after its search; ``error`` holds the traceback of a tree that crashed."""

    task_id: str
    root: Node[S, A]
    config: SearchSettings
    stop_reason: StopReason
    iterations: int
    elapsed_s: float
    stats: TreeStats
    error: str | None = None

    def successes(self) -> list[Node[S, A]]:
        return [node for node in self.root.walk() if self.config.is_success(node)]

    def best(self) -> Node[S, A] | None:
        """The best success: highest value, then highest Q, then shallowest, then oldest."""
        successes = self.successes()
        if not successes:
            return None
        return max(successes, key=lambda n: (self.config.value(n), _q(n), -n.depth, -n.id))

    def best_path(self) -> list[Node[S, A]] | None:
        """Root to the best success, or ``None`` when the search found none."""
        best = self.best()
        return None if best is None else best.path()

    def failed_siblings(
        self, path: list[Node[S, A]] | None = None
    ) -> list[tuple[Node[S, A], list[Node[S, A]]]]:
        """For each step of ``path`` (default: the best path), the siblings that were worse.

        A sibling counts as a failure only if its value is strictly lower than
        the chosen child's, its Q is not at least as high (when both have one),
        and no success lies in its subtree. The reference took the lowest
        sibling whether or not it was worse (D5), which can teach "go back"
        from a branch that was as good as the one taken.
        """
        path = self.best_path() if path is None else path
        if not path:
            return []
        steps = []
        for chosen in path[1:]:
            assert chosen.parent is not None
            failures = [
                sibling
                for sibling in chosen.parent.children
                if sibling is not chosen and self._worse(sibling, chosen)
            ]
            steps.append((chosen, failures))
        return steps

    def _worse(self, sibling: Node[S, A], chosen: Node[S, A]) -> bool:
        if self.config.value(sibling) >= self.config.value(chosen):
            return False
        if sibling.q is not None and chosen.q is not None and sibling.q >= chosen.q:
            return False
        return not any(self.config.is_success(node) for node in sibling.walk())

    def to_dict(
        self, encode_state: Codec | None = None, encode_action: Codec | None = None
    ) -> dict[str, Any]:
        """A JSON-ready dump; ``best_path`` (node ids) is derived and repeated for readers."""
        best = self.best_path()
        return {
            "task_id": self.task_id,
            "stop_reason": self.stop_reason.value,
            "iterations": self.iterations,
            "elapsed_s": self.elapsed_s,
            "error": self.error,
            "config": self.config.to_dict(),
            "stats": asdict(self.stats),
            "best_path": None if best is None else [node.id for node in best],
            "nodes": tree_to_list(self.root, encode_state, encode_action),
        }

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        decode_state: Codec | None = None,
        decode_action: Codec | None = None,
    ) -> SearchResult[Any, Any]:
        return cls(
            task_id=data["task_id"],
            root=tree_from_list(data["nodes"], decode_state, decode_action),
            config=SearchSettings.from_dict(data["config"]),
            stop_reason=StopReason(data["stop_reason"]),
            iterations=data["iterations"],
            elapsed_s=data["elapsed_s"],
            stats=TreeStats(**data["stats"]),
            error=data["error"],
        )


def _q(node: Node[Any, Any]) -> float:
    return float("-inf") if node.q is None else node.q
