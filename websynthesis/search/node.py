"""A node of a search tree: where it is, how it got there, what it is worth.

A node keeps two values apart on purpose. ``reward`` is its *own* immediate
score from the evaluator, set once and never touched by backpropagation;
``value_sum / visits`` (Q) is the mean of the returns of the iterations that
went through it. The reference overwrote a node's reward with its children's
mean (bug B7), which lost the per-step score the training data needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic

from websynthesis.search.interfaces import A, S

Codec = Callable[[Any], Any]
"""Turns an opaque state or action into a JSON value, or back."""


class TerminalKind(StrEnum):
    """Why a node is not expanded further.

    ``stop``: its action is a stop (scored like any node; a success only with a
    reward at or above the end gate). ``end_gate``: its reward reached the end
    gate. ``world``: the world ended the episode. ``depth_limit``: it sits at
    ``max_depth``. ``dead_end``: the policy proposed no valid action there, a
    failure valued at ``low`` (the reference treated it as solved, bug B2).
    ``world_error``: the world could not simulate the step, also worth ``low``.
    """

    STOP = "stop"
    END_GATE = "end_gate"
    WORLD = "world"
    DEPTH_LIMIT = "depth_limit"
    DEAD_END = "dead_end"
    WORLD_ERROR = "world_error"


@dataclass(slots=True, eq=False)
class Node(Generic[S, A]):
    """One state of a search tree, reached from ``parent`` by ``action``.

    ``id`` is the node's creation index in its tree (the root is 0), stable
    across a dump and a load. ``children`` is empty until the node is expanded
    (``expanded``); a node expanded with no valid proposal is a dead end.
    ``rollout`` is the value of the rollout started here, if any.
    ``virtual_loss`` counts the in-flight iterations whose path holds this node;
    it is zero whenever the tree is at rest and is never saved.
    """

    id: int
    state: S = field(repr=False)
    parent: Node[S, A] | None = field(default=None, repr=False)
    action: A | None = None
    thought: str = field(default="", repr=False)
    depth: int = 0
    children: list[Node[S, A]] = field(default_factory=list, repr=False)
    visits: int = 0
    value_sum: float = 0.0
    reward: float | None = None
    reward_reason: str = field(default="", repr=False)
    reward_ok: bool = True
    env_reward: float | None = None
    terminal: TerminalKind | None = None
    expanded: bool = False
    rollout: float | None = None
    virtual_loss: int = field(default=0, repr=False)

    @property
    def q(self) -> float | None:
        """Mean return of the iterations through this node; ``None`` before the first."""
        return self.value_sum / self.visits if self.visits else None

    def path(self) -> list[Node[S, A]]:
        """The nodes from the root down to this one (O(depth))."""
        nodes: list[Node[S, A]] = []
        node: Node[S, A] | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        nodes.reverse()
        return nodes

    def walk(self) -> list[Node[S, A]]:
        """This node and all its descendants, parents before children (O(subtree))."""
        nodes = [self]
        for node in nodes:
            nodes.extend(node.children)
        return nodes

    def to_dict(
        self, encode_state: Codec | None = None, encode_action: Codec | None = None
    ) -> dict[str, Any]:
        """This node alone (children by reference through their ``parent`` id), JSON-ready.

        ``encode_state`` / ``encode_action`` turn opaque states and actions into
        JSON values; by default they must already be JSON values.
        """
        return {
            "id": self.id,
            "parent": None if self.parent is None else self.parent.id,
            "depth": self.depth,
            "action": _apply(encode_action, self.action) if self.action is not None else None,
            "thought": self.thought,
            "state": _apply(encode_state, self.state),
            "visits": self.visits,
            "value_sum": self.value_sum,
            "reward": self.reward,
            "reward_reason": self.reward_reason,
            "reward_ok": self.reward_ok,
            "env_reward": self.env_reward,
            "terminal": None if self.terminal is None else self.terminal.value,
            "expanded": self.expanded,
            "rollout": self.rollout,
        }


def _apply(function: Codec | None, value: Any) -> Any:
    return value if function is None else function(value)


def tree_to_list(
    root: Node[S, A], encode_state: Codec | None = None, encode_action: Codec | None = None
) -> list[dict[str, Any]]:
    """The whole tree as a flat list of node dicts in id order (parents first).

    Flat rather than nested: no recursion limit on deep trees, and each line of
    a later event log can be one node.
    """
    nodes = sorted(root.walk(), key=lambda node: node.id)
    return [node.to_dict(encode_state, encode_action) for node in nodes]


def tree_from_list(
    rows: list[dict[str, Any]],
    decode_state: Codec | None = None,
    decode_action: Codec | None = None,
) -> Node[Any, Any]:
    """Rebuild a tree from :func:`tree_to_list`; children keep their id (creation) order."""
    by_id: dict[int, Node[Any, Any]] = {}
    root: Node[Any, Any] | None = None
    for row in sorted(rows, key=lambda r: r["id"]):
        parent = None if row["parent"] is None else by_id[row["parent"]]
        action = row["action"]
        node: Node[Any, Any] = Node(
            id=row["id"],
            state=_apply(decode_state, row["state"]),
            parent=parent,
            action=_apply(decode_action, action) if action is not None else None,
            thought=row["thought"],
            depth=row["depth"],
            visits=row["visits"],
            value_sum=row["value_sum"],
            reward=row["reward"],
            reward_reason=row["reward_reason"],
            reward_ok=row["reward_ok"],
            env_reward=row["env_reward"],
            terminal=None if row["terminal"] is None else TerminalKind(row["terminal"]),
            expanded=row["expanded"],
            rollout=row["rollout"],
        )
        by_id[node.id] = node
        if parent is None:
            if root is not None:
                raise ValueError("tree has more than one root")
            root = node
        else:
            parent.children.append(node)
    if root is None:
        raise ValueError("empty tree")
    return root
