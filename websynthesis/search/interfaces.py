"""What the search asks of a problem: a :class:`World` and a :class:`SearchPolicy`, kept apart.

The split follows llm-reasoners: the *world* says what an action does to a
state (a web world model, later a real browser), the *search policy* (its
"search config") proposes actions and scores the states they lead to. The
search algorithm sees states and actions only as opaque values ``S`` and
``A``; it never parses a page or a model answer, so the same code searches a
toy graph in the tests and a simulated website in production.

Failures are values, not exceptions: an unparsable proposal is a
:class:`Proposal` with ``error`` set, an unparsable reward is an
:class:`Evaluation` with ``ok=False``. Both are counted and the tree goes on;
an exception from a problem is a bug and fails that tree only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from websynthesis.search.node import Node

S = TypeVar("S")
A = TypeVar("A")
A_contra = TypeVar("A_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class StepOutcome(Generic[S]):
    """The result of one :meth:`World.step`.

    ``env_reward`` is a reward the environment itself gives (a real browser's
    task evaluator); world models leave it ``None``. It is stored on the new
    node, where :meth:`SearchPolicy.evaluate` can read it and blend it in.
    ``terminal`` means the world ended the episode (the node gets terminal
    kind ``world``). ``error`` means the step could not be simulated (say, a
    world model's answer had no page in it after its retries): the node is kept
    as a failure (kind ``world_error``, worth ``low``, not evaluated) and
    ``state`` is whatever the world could give, usually the previous state.
    """

    state: S
    env_reward: float | None = None
    terminal: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Proposal(Generic[A]):
    """One candidate action with the reasoning ("thought") that produced it.

    ``error`` marks a sample the policy could not parse or validate; the search
    drops it (counted as invalid) instead of every policy inventing a sentinel.
    """

    action: A | None
    thought: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A score for a new state.

    ``ok=False`` means the score could not be obtained (unparsable answer,
    failed call): the node stores ``reward=None`` and the reason, and the search
    values it at ``SearchSettings.failed_reward``. Unlike the reference, which
    turned parse failures into 0 (bug B6), a failure stays distinguishable from
    a bad score in the saved tree.
    """

    reward: float | None
    reason: str = ""
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Context(Generic[S, A]):
    """What the policy sees of the search when asked about ``node``.

    ``node.path()`` gives the steps from the root (state, thought, action,
    reward of each). ``payload`` is the task's own data (the intent). ``seed``
    is fixed by the tree seed and the node, so a policy that samples with
    ``Sampling(seed=context.seed)`` makes the whole search reproducible.
    """

    node: Node[S, A]
    payload: Any
    seed: int


class World(Protocol[S, A_contra]):
    """The dynamics: what an action does to a state."""

    async def step(self, state: S, action: A_contra) -> StepOutcome[S]:
        """Apply ``action`` to ``state``.

        Called for every kept action, stops included: a world model should
        return the state unchanged for a stop without asking a model (the
        reference decided that with a substring test on the raw text, bug B1;
        here the caller has the parsed action).
        """
        ...


class SearchPolicy(Protocol[S, A]):
    """The search configuration: proposes actions, scores states, knows stops and duplicates."""

    async def propose(self, context: Context[S, A], k: int) -> list[Proposal[A]]:
        """Up to ``k`` candidate actions at ``context.node`` (fewer, or none, is allowed)."""
        ...

    async def evaluate(self, context: Context[S, A], new_state: S) -> Evaluation:
        """Score ``context.node``, a new node whose state is ``new_state``."""
        ...

    def is_stop(self, action: A) -> bool:
        """Whether the *parsed* action ends the episode (``stop [answer]``)."""
        ...

    def equivalent(self, a: A, b: A) -> bool:
        """Whether two actions are the same move (dedup among the proposals of one node)."""
        ...
