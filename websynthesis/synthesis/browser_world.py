"""The search's :class:`~websynthesis.synthesis.world.BrowserWorld` on live browsers.

MCTS visits states in any order; a browser only moves forward. Every
:class:`~websynthesis.synthesis.state.WebState` carries its action prefix, so a state is
reached again by resetting the task with its seed and replaying the prefix. A browser already
standing on the state (a child expanded right after its parent, if no other tree took that
browser meanwhile) is reused without replay; the pool prefers such a browser. With more
trees in flight than browsers, nearly every step is a replay (``ReplayStats``).

Task instances: a MiniWoB++ task is another page and instruction under each seed, so one
task searched under several seeds is several trees. Their task ids say the seed
(``click-test@3``, :func:`~websynthesis.data.tasks.instance_id`), and every reset and
replay of that id uses it; an id without ``@seed`` runs under the world's default ``seed``.
The objective of an instance is the environment's instruction, known once it is reset
(:meth:`LiveBrowserWorld.goal`).

Rewards: the task's own reward (MiniWoB's) is passed through as ``StepOutcome.env_reward``;
a ``stop`` does not touch the browser and carries the reward of the state it stops on.
With ``scored=False`` (self-hosted WebArena, scored afterwards by the evaluators) every
``env_reward`` is ``None`` and the search asks its reward model.

A browser that cannot start a task raises :class:`~websynthesis.env.base.EnvError` from
:meth:`LiveBrowserWorld.reset`: the environment failed, not the task, so it is not
:class:`~websynthesis.synthesis.world.Unsearchable`. A replay that fails (browser crash,
timeout, an episode that ends early) makes the step a ``StepOutcome(error=...)``, which the
search keeps as a failed leaf. A replayed page that differs from the stored one (a page with
timers or randomness beyond the seed) is counted in :attr:`ReplayStats.mismatches` and the
search goes on from the live page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websynthesis.config import EnvConfig
from websynthesis.counters import Counters
from websynthesis.data.tasks import Task, split_instance
from websynthesis.env.base import EnvError, WebEnv
from websynthesis.env.browsergym_env import make_env
from websynthesis.env.pool import EnvPool
from websynthesis.search import StepOutcome
from websynthesis.synthesis.state import Goal, WebState
from websynthesis.synthesis.world import BrowserWorld
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, action_set
from websynthesis.web.actions import Action, ActionKind

_Position = tuple[str, tuple[Action, ...]]


@dataclass
class ReplayStats(Counters):
    """``resets`` of a task's first page, ``replays`` of a prefix and the ``replayed_steps``
    they took, ``direct`` steps on a browser already in place, replayed pages that differed
    from the stored ones (``mismatches``) and environment ``failures``."""

    resets: int = 0
    replays: int = 0
    replayed_steps: int = 0
    direct: int = 0
    mismatches: int = 0
    failures: int = 0


class LiveBrowserWorld(BrowserWorld):
    """Reset-and-replay search over a pool of live environments (see the module docstring).

    ``seed`` runs the task ids that name none (``click-test@3`` names 3). ``goals`` maps each
    reset task id to the environment's goal text: for MiniWoB++ the instruction depends on
    the seed and is only known once the page is up.
    """

    def __init__(
        self,
        pool: EnvPool[Any],
        *,
        seed: int = 0,
        scored: bool = True,
        actions: ActionSet = WEBARENA_ACTIONS,
    ) -> None:
        self.pool = pool
        self.seed = seed
        self.scored = scored
        self.actions = actions
        self.goals: dict[str, str] = {}
        self.stats = ReplayStats()
        self._positions: dict[int, _Position | None] = {}  # id(env) -> where its browser is
        self._rewards: dict[_Position, float] = {}  # reward of reaching a state

    @classmethod
    def from_config(
        cls, config: EnvConfig, tasks: Sequence[Task] = (), *, seed: int = 0
    ) -> LiveBrowserWorld:
        """``config.pool_size`` browsers of ``config``; rewards are passed through for MiniWoB++
        only (a self-hosted WebArena is scored by the evaluators, after the episode)."""
        pool = EnvPool(lambda: make_env(config, tasks), config.pool_size)
        actions = action_set(config.actions)
        return cls(pool, seed=seed, scored=config.name == "miniwob", actions=actions)

    async def reset(self, task: Task) -> WebState:
        """The first page of ``task`` under its seed; raises ``EnvError`` if no browser starts."""
        return await asyncio.to_thread(self._reset, task.task_id)

    def goal(self, task: Task) -> Goal:
        """The environment's instruction for ``task`` (after :meth:`reset`), with its
        declared action set.

        No allowed sites: MiniWoB++ pages are ``file://`` pages with nowhere to go. (The
        policy's grammar then lets ``goto`` name any http(s) URL; the browser cannot reach
        it, and MiniWoB++ ends the episode with reward 0: a failed leaf, not a crash.)
        """
        if task.task_id not in self.goals:
            raise KeyError(f"{task.task_id!r} has no instruction yet: reset it first")
        return Goal(task.task_id, self.goals[task.task_id], actions=self.actions)

    def close(self) -> None:
        """Stop every browser of the pool (steps still waiting for one get ``RuntimeError``)."""
        self.pool.close()

    async def step(self, state: WebState, action: Action) -> StepOutcome[WebState]:
        if action.kind is ActionKind.STOP:
            return StepOutcome(
                state.after(action), env_reward=self._reward((state.task_id, state.actions))
            )
        return await asyncio.to_thread(self._step, state, action)

    def _reset(self, task_id: str) -> WebState:
        with self.pool.lease() as env:
            self._positions[id(env)] = None  # unknown until the reset succeeds
            observation = env.reset(*split_instance(task_id, self.seed))
            self.stats.resets += 1
            self._positions[id(env)] = (task_id, ())
        self.goals[task_id] = observation.goal
        self._rewards[(task_id, ())] = 0.0
        return WebState(task_id, observation.tree)

    def _step(self, state: WebState, action: Action) -> StepOutcome[WebState]:
        here: _Position = (state.task_id, state.actions)
        with self.pool.lease(prefer=lambda env: self._positions.get(id(env)) == here) as env:
            at = self._positions.get(id(env))
            self._positions[id(env)] = None  # unknown until this step succeeds
            if at != here:
                failure = self._replay(env, state)
                if failure is not None:
                    self.stats.failures += 1
                    return StepOutcome(state, error=failure)
            else:
                self.stats.direct += 1
            result = env.step(action)
            if result.error is not None:
                self.stats.failures += 1
                return StepOutcome(state, error=result.error)
            refused = result.observation.last_action_error
            after = state.after(action, result.observation.tree, refused=refused)
            ended = result.done or result.truncated
            if not ended:
                self._positions[id(env)] = (state.task_id, after.actions)
        self._rewards[(state.task_id, after.actions)] = result.reward
        reward = result.reward if self.scored else None
        return StepOutcome(after, env_reward=reward, terminal=ended)

    def _replay(self, env: WebEnv, state: WebState) -> str | None:
        """Bring ``env`` to ``state``: reset, then the prefix. Returns why it failed, if it did."""
        self.stats.replays += 1
        try:
            observation = env.reset(*split_instance(state.task_id, self.seed))
        except EnvError as error:
            return f"replay: reset failed: {error}"
        for index, action in enumerate(state.actions):
            result = env.step(action)
            self.stats.replayed_steps += 1
            if result.error is not None:
                return f"replay: step {index + 1} ({action}) failed: {result.error}"
            if result.done:
                return f"replay: the episode ended at step {index + 1} ({action})"
            observation = result.observation
        if observation.text != state.observation.render():
            self.stats.mismatches += 1
        return None

    def _reward(self, position: _Position) -> float | None:
        return self._rewards.get(position) if self.scored else None
