"""Generic Monte Carlo Tree Search and a batched engine that searches many trees at once.

Nothing here knows about the web: states and actions are opaque. A problem is
a :class:`World` plus a :class:`SearchPolicy` (see ``interfaces``);
:class:`TreeSearch` searches one tree, :class:`SearchEngine` many, so that the
model calls of all trees meet in the same waves (see
``websynthesis.backends.batching``).
"""

from websynthesis.search.engine import EngineSettings, Progress, SearchEngine, TreeTask
from websynthesis.search.interfaces import (
    Context,
    Evaluation,
    Proposal,
    SearchPolicy,
    StepOutcome,
    World,
)
from websynthesis.search.mcts import TreeSearch, backpropagate, select_child
from websynthesis.search.node import Node, TerminalKind
from websynthesis.search.result import SearchResult, StopReason, TreeStats
from websynthesis.search.settings import SearchSettings

__all__ = [
    "Context",
    "EngineSettings",
    "Evaluation",
    "Node",
    "Progress",
    "Proposal",
    "SearchEngine",
    "SearchPolicy",
    "SearchResult",
    "SearchSettings",
    "StepOutcome",
    "StopReason",
    "TerminalKind",
    "TreeSearch",
    "TreeStats",
    "TreeTask",
    "World",
    "backpropagate",
    "select_child",
]
