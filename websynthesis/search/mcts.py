"""Monte Carlo Tree Search over one task: selection, expansion, rollout, backpropagation.

One iteration:

1. **Select**: from the root, follow :func:`select_child` while the node is
   expanded and not terminal. A node another iteration is expanding right now
   is waited for, then descended into.
2. **Expand** the unexpanded leaf: the policy proposes ``branch * oversample``
   actions; invalid ones and duplicates (by ``policy.equivalent``) are dropped
   and the first ``branch`` kept; each kept action is stepped through the world
   and the new state scored (a step the world could not simulate is kept as a
   failed leaf, unscored). No valid proposal makes the leaf a dead end, a
   failure worth ``low``. The best new child (by value) is then the leaf.
3. **Evaluate the leaf**: a terminal node returns its value; a new child its
   value, or ``alpha * rollout + (1 - alpha) * value`` with rollouts.
4. **Backpropagate**: ``visits += 1`` and ``value_sum += return`` on every node
   of the path, so ``Q = value_sum / visits`` is the mean return. Immediate
   rewards are never touched (fixes B7).

A terminal node is a scored leaf, never a global exit: selecting it again just
backpropagates its value again, and the search runs until its budget is spent,
unless ``stop_on_solution`` is set and a success exists (fixes B2, where a
``stop [N/A]`` scored 1/5 ended the search as "solved").

Up to ``in_flight`` iterations of a tree run at once; each in-flight path holds
a virtual loss on its nodes so the others pick different branches. With
``in_flight=1`` and a deterministic problem, the tree depends on the seed only.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from websynthesis.search.interfaces import A, Context, Evaluation, Proposal, S, SearchPolicy, World
from websynthesis.search.node import Node, TerminalKind
from websynthesis.search.result import SearchResult, StopReason, TreeStats
from websynthesis.search.settings import SearchSettings

T = TypeVar("T")
Gather = Callable[[Sequence[Coroutine[Any, Any, T]]], Awaitable[list[T]]]

_MASK64 = (1 << 64) - 1


def tree_seed(seed: int, task_id: str) -> int:
    """The seed of one tree: fixed by the base seed and the task id, not by run order."""
    return mix_seed(seed, zlib.crc32(task_id.encode("utf-8")))


def mix_seed(seed: int, key: int) -> int:
    """A 31-bit seed from two integers (splitmix64 finaliser): near keys give unrelated seeds."""
    z = (seed * 0x9E3779B97F4A7C15 + key + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def argmax(items: Sequence[T], key: Callable[[T], float], rng: random.Random) -> T:
    """The item with the highest key; exact ties go to ``rng`` (seeded, so deterministic)."""
    scores = [key(item) for item in items]
    best = max(scores)
    tied = [item for item, score in zip(items, scores, strict=True) if score == best]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def select_child(node: Node[S, A], config: SearchSettings, rng: random.Random) -> Node[S, A]:
    """The child an iteration descends into.

    Children no iteration has visited or is visiting come first, best value
    first (the evaluator already scored them); otherwise the highest UCT.
    Exact ties go to ``rng``. One pass, no allocation per child: this is the
    innermost loop of the search.
    """
    parent_visits = node.visits + node.virtual_loss
    log_n = math.log(parent_visits) if parent_visits > 1 else 0.0
    best: tuple[int, float] | None = None
    tied: list[Node[S, A]] = []
    for child in node.children:
        if child.visits + child.virtual_loss == 0:
            key = (1, config.value(child))
        else:
            key = (0, config.uct(child, log_n))
        if best is None or key > best:
            best, tied = key, [child]
        elif key == best:
            tied.append(child)
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def backpropagate(path: Sequence[Node[S, A]], value: float, config: SearchSettings) -> None:
    """Add the leaf's return to every node of ``path`` (root first), discounted toward ``low``."""
    for node in reversed(path):
        node.visits += 1
        node.value_sum += value
        value = config.low + config.discount * (value - config.low)


class TreeSearch(Generic[S, A]):
    """The search of one task's tree.

    Args:
        world, policy: the problem (see ``interfaces``).
        root_state: the task's first state.
        config: the algorithm's parameters.
        task_id: names the tree and, with ``config.seed``, fixes its seed.
        payload: the task's own data, handed to the policy in every context.
        budget_exhausted: checked before each iteration; ``True`` stops the
            tree cleanly (a global token or cost budget kept by the model layer).
        clock: seconds, for the time budget (a fake one in tests).
    """

    def __init__(
        self,
        world: World[S, A],
        policy: SearchPolicy[S, A],
        root_state: S,
        config: SearchSettings | None = None,
        *,
        task_id: str = "",
        payload: Any = None,
        budget_exhausted: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.world = world
        self.policy = policy
        self.config = config or SearchSettings()
        self.task_id = task_id
        self.payload = payload
        self.seed = tree_seed(self.config.seed, task_id)
        self.rng = random.Random(self.seed)
        self.root: Node[S, A] = Node(id=0, state=root_state)
        self.stats = TreeStats()
        self.iterations = 0
        self._budget_exhausted = budget_exhausted
        self._clock = clock
        self._next_id = 1
        self._next_rollout_id = -1
        self._expanding: dict[int, asyncio.Future[None]] = {}
        self._solved = False
        self._started = 0
        self._start_time = 0.0
        self._stop_reason: StopReason | None = None
        self._gather: Gather[Any] = _concurrently

    async def run(self, in_flight: int = 1, batch: bool = True) -> SearchResult[S, A]:
        """Search until a budget is spent and return the tree.

        ``in_flight``: iterations of this tree running at once. ``batch=False``
        awaits the world steps and evaluations of an expansion's children (and
        of rollout candidates) one after the other instead of together.
        An exception from the problem propagates; :meth:`result` still gives
        the partial tree.
        """
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self._gather = _concurrently if batch else _sequentially
        self._start_time = self._clock()
        if in_flight == 1:
            await self._worker()
        else:
            async with asyncio.TaskGroup() as group:
                for _ in range(in_flight):
                    group.create_task(self._worker())
        assert self._stop_reason is not None
        return self.result(self._stop_reason)

    def result(self, stop_reason: StopReason, error: str | None = None) -> SearchResult[S, A]:
        """The tree as it stands, marked with why it stopped."""
        return SearchResult(
            task_id=self.task_id,
            root=self.root,
            config=self.config,
            stop_reason=stop_reason,
            iterations=self.iterations,
            elapsed_s=self._clock() - self._start_time,
            stats=self.stats,
            error=error,
        )

    async def _worker(self) -> None:
        while self._check_stop() is None:
            self._started += 1
            await self._iteration()

    def _check_stop(self) -> StopReason | None:
        """The first reason to start no more iterations; once set, it stays."""
        if self._stop_reason is None:
            config = self.config
            if config.stop_on_solution and self._solved:
                self._stop_reason = StopReason.SOLVED
            elif self._started >= config.iterations:
                self._stop_reason = StopReason.ITERATIONS
            elif (
                config.time_limit_s is not None
                and self._clock() - self._start_time >= config.time_limit_s
            ):
                self._stop_reason = StopReason.TIME
            elif self._budget_exhausted is not None and self._budget_exhausted():
                self._stop_reason = StopReason.BUDGET
        return self._stop_reason

    async def _iteration(self) -> None:
        root = self.root
        root.virtual_loss += 1
        path = [root]
        try:
            await self._descend(path)
            leaf = path[-1]
            if leaf.terminal is None:
                await self._expand(leaf)
                if leaf.children:
                    child = select_child(leaf, self.config, self.rng)
                    child.virtual_loss += 1
                    path.append(child)
            value = await self._leaf_return(path[-1])
            backpropagate(path, value, self.config)
            self.iterations += 1
        finally:
            for node in path:
                node.virtual_loss -= 1

    async def _descend(self, path: list[Node[S, A]]) -> None:
        """Extend ``path`` down to a terminal node or an unexpanded one, holding virtual loss."""
        node = path[-1]
        while node.terminal is None:
            pending = self._expanding.get(node.id)
            if pending is not None:
                await pending
                continue
            if not node.expanded:
                return
            node = select_child(node, self.config, self.rng)
            node.virtual_loss += 1
            path.append(node)

    async def _expand(self, node: Node[S, A]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expanding[node.id] = done
        try:
            config = self.config
            proposals = await self.policy.propose(
                self._context(node), config.branch * config.oversample
            )
            kept = self._keep(proposals, config.branch)
            first = self._next_id
            self._next_id += len(kept)
            children = await self._gather(
                [self._make_child(node, p, first + i) for i, p in enumerate(kept)]
            )
            node.children = children
            node.expanded = True
            self.stats.expansions += 1
            self.stats.nodes += len(children)
            if not children:
                node.terminal = TerminalKind.DEAD_END
                self.stats.dead_ends += 1
            if not self._solved:
                self._solved = any(config.is_success(child) for child in children)
        finally:
            del self._expanding[node.id]
            done.set_result(None)

    def _keep(self, proposals: Sequence[Proposal[A]], limit: int) -> list[Proposal[A]]:
        """The first ``limit`` valid, pairwise non-equivalent proposals."""
        stats = self.stats
        stats.proposals += len(proposals)
        kept: list[Proposal[A]] = []
        actions: list[A] = []
        for proposal in proposals:
            if len(kept) == limit:
                break
            action = proposal.action
            if proposal.error is not None or action is None:
                stats.invalid_proposals += 1
            elif any(self.policy.equivalent(action, other) for other in actions):
                stats.duplicate_proposals += 1
            else:
                kept.append(proposal)
                actions.append(action)
        return kept

    async def _make_child(
        self, parent: Node[S, A], proposal: Proposal[A], node_id: int
    ) -> Node[S, A]:
        """Step ``proposal`` from ``parent``, score the new state, classify it (not attached)."""
        action = proposal.action
        assert action is not None
        transition = await self.world.step(parent.state, action)
        self.stats.world_steps += 1
        child: Node[S, A] = Node(
            id=node_id,
            state=transition.state,
            parent=parent,
            action=action,
            thought=proposal.thought,
            depth=parent.depth + 1,
            env_reward=transition.env_reward,
        )
        if transition.error is not None:
            child.reward_ok, child.reward_reason = False, transition.error
            child.terminal = TerminalKind.WORLD_ERROR
            self.stats.failed_world_steps += 1
            return child
        evaluation = await self.policy.evaluate(self._context(child), transition.state)
        self.stats.evaluations += 1
        self._score(child, evaluation)
        child.terminal = self._terminal_kind(child, transition.terminal)
        return child

    def _score(self, node: Node[S, A], evaluation: Evaluation) -> None:
        reward = evaluation.reward
        node.reward_reason = evaluation.reason
        if evaluation.ok and reward is not None and math.isfinite(reward):
            node.reward = float(reward)
        else:
            node.reward = None
            node.reward_ok = False
            self.stats.failed_evaluations += 1

    def _terminal_kind(self, node: Node[S, A], world_terminal: bool) -> TerminalKind | None:
        assert node.action is not None
        if self.policy.is_stop(node.action):
            return TerminalKind.STOP
        if self.config.value(node) >= self.config.end_gate:
            return TerminalKind.END_GATE
        if world_terminal:
            return TerminalKind.WORLD
        if node.depth >= self.config.max_depth:
            return TerminalKind.DEPTH_LIMIT
        return None

    async def _leaf_return(self, leaf: Node[S, A]) -> float:
        config = self.config
        value = config.value(leaf)
        if leaf.terminal is not None or config.roll_forward_steps == 0:
            return value
        leaf.rollout = await self._rollout(leaf)
        return config.alpha * leaf.rollout + (1 - config.alpha) * value

    async def _rollout(self, start: Node[S, A]) -> float:
        """Play ``roll_forward_steps`` steps from ``start`` outside the tree and value them.

        Each step asks for ``roll_branch`` proposals and follows the best
        (greedy) or a random one. The value of the step that ends the rollout
        counts (the reference dropped it, B11); a step with no valid proposal
        is a dead end worth ``low`` (the reference crashed).
        """
        config = self.config
        node = start
        values: list[float] = []
        for _ in range(config.roll_forward_steps):
            kept = self._keep(
                await self.policy.propose(self._context(node), config.roll_branch),
                config.roll_branch,
            )
            if not kept:
                values.append(config.low)
                break
            ids = range(self._next_rollout_id, self._next_rollout_id - len(kept), -1)
            self._next_rollout_id -= len(kept)
            candidates = await self._gather(
                [self._make_child(node, p, i) for p, i in zip(kept, ids, strict=True)]
            )
            self.stats.rollout_steps += 1
            if config.roll_policy == "greedy":
                node = argmax(candidates, config.value, self.rng)
            else:
                node = self.rng.choice(candidates)
            values.append(config.value(node))
            if node.terminal is not None:
                break
        return max(values) if config.rollout_value == "max" else values[-1]

    def _context(self, node: Node[S, A]) -> Context[S, A]:
        return Context(node=node, payload=self.payload, seed=mix_seed(self.seed, node.id))


async def _concurrently(coroutines: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run together; if one fails, the others are cancelled rather than left running."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(coroutine) for coroutine in coroutines]
    return [task.result() for task in tasks]


async def _sequentially(coroutines: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    results: list[T] = []
    try:
        for coroutine in coroutines:
            results.append(await coroutine)
    finally:
        for coroutine in coroutines[len(results) + 1 :]:
            coroutine.close()
    return results
