"""The knobs of one tree search, and what a node is worth under them.

Rewards live on a declared scale ``[low, high]`` (the reference used 0–5 with
1–5 scores; a calibrated reward model uses 0–1). Everything that compares
values goes through this module, so the scale is stated once:

* a node's *value* is its immediate reward clamped to the scale; a failed
  evaluation counts as ``failed_reward`` (default ``low``); a dead end or a
  step the world could not simulate is ``low``;
* UCT works on values normalised to ``[0, 1]``, so ``exploration`` is the
  usual dimensionless UCT constant and means the same on every scale (the
  reference's ``c = 0.7`` on raw 0–5 values is ``0.14`` here, which is why its
  search was near-greedy, bug B7);
* a *success* is a stop or end-gate node whose value is at least ``end_gate``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from websynthesis.search.node import Node, TerminalKind


@dataclass(frozen=True)
class SearchSettings:
    """Parameters of one tree search (the algorithm; how trees run together is the engine's).

    Args:
        branch: distinct actions kept per expansion.
        oversample: the policy is asked for ``branch * oversample`` proposals,
            so duplicates and invalid ones can be dropped (the reference: 2).
        iterations: select-expand-backpropagate rounds per tree.
        max_depth: nodes at this depth are terminal (``depth_limit``).
        time_limit_s: wall-clock budget per tree; no new iteration starts after it.
        exploration: UCT constant ``c`` on normalised values.
        low, high: the reward scale. ``low`` is also the value of a failure.
        end_gate: value at or above which a node is a terminal success.
        failed_reward: value of a node whose evaluation failed (``None``: ``low``).
        discount: per-level factor on a return as it goes up the path; it shrinks
            the return toward ``low``, so it stays on the scale and shorter
            successes are preferred when below 1.
        roll_forward_steps: rollout depth from each new child (0: none, as in the reference).
        roll_policy: ``greedy`` (best new value) or ``random`` rollout steps.
        roll_branch: proposals asked per rollout step.
        rollout_value: ``max`` of the values met on the rollout (the reference's
            rule, terminating step included) or the ``last`` one.
        alpha: a rolled-out child returns ``alpha * rollout + (1 - alpha) * value``.
        stop_on_solution: end the tree once a success exists, instead of using
            the whole budget.
        seed: base seed; each tree's seed mixes it with the task id.
    """

    branch: int = 2
    oversample: int = 2
    iterations: int = 16
    max_depth: int = 10
    time_limit_s: float | None = None
    exploration: float = 1.0
    low: float = 0.0
    high: float = 1.0
    end_gate: float = 0.95
    failed_reward: float | None = None
    discount: float = 1.0
    roll_forward_steps: int = 0
    roll_policy: Literal["greedy", "random"] = "greedy"
    roll_branch: int = 1
    rollout_value: Literal["max", "last"] = "max"
    alpha: float = 0.5
    stop_on_solution: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "branch >= 1": self.branch >= 1,
            "oversample >= 1": self.oversample >= 1,
            "iterations >= 0": self.iterations >= 0,
            "max_depth >= 1": self.max_depth >= 1,
            "low < high": self.low < self.high,
            "0 < discount <= 1": 0 < self.discount <= 1,
            "0 <= alpha <= 1": 0 <= self.alpha <= 1,
            "roll_forward_steps >= 0": self.roll_forward_steps >= 0,
            "roll_branch >= 1": self.roll_branch >= 1,
            "exploration >= 0": self.exploration >= 0,
            "roll_policy in (greedy, random)": self.roll_policy in ("greedy", "random"),
            "rollout_value in (max, last)": self.rollout_value in ("max", "last"),
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid SearchSettings: {', '.join(failed)}")

    def clamp(self, value: float) -> float:
        return min(max(value, self.low), self.high)

    def value(self, node: Node[Any, Any]) -> float:
        """What ``node`` is worth as the end of an iteration, on the scale."""
        if node.terminal in _FAILURES:
            return self.low
        if node.reward is None:
            return self.clamp(self.low if self.failed_reward is None else self.failed_reward)
        return self.clamp(node.reward)

    def is_success(self, node: Node[Any, Any]) -> bool:
        """A stop or end-gate node whose value reaches the end gate."""
        return (
            node.terminal in (TerminalKind.STOP, TerminalKind.END_GATE)
            and self.value(node) >= self.end_gate
        )

    def uct(self, child: Node[Any, Any], log_parent_visits: float) -> float:
        """``Q + c * sqrt(ln N_parent / N_child)`` on normalised values, virtual loss included.

        Each in-flight iteration through ``child`` counts as one more visit
        that returned ``low``, so concurrent selections spread out.
        """
        n = child.visits + child.virtual_loss
        q = (child.value_sum - child.visits * self.low) / (n * (self.high - self.low))
        return q + self.exploration * math.sqrt(log_parent_visits / n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        return cls(**data)


_FAILURES = (TerminalKind.DEAD_END, TerminalKind.WORLD_ERROR)
