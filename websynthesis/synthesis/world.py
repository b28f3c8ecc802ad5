"""The web's dynamics for the search: a world model (:class:`ModelWorld`) or a live site.

Both implement the search core's :class:`~websynthesis.search.World` on :class:`WebState`
and add :meth:`reset`, which gives a task's first state, so the same search code runs on an
imagined web (the paper's setting) and on a real one (MiniWoB++, self-hosted WebArena).

:class:`ModelWorld` hands the world-model role the *parsed, canonical* action and the
action prefix, never the policy's reasoning: the reference passed the raw response and
skipped the model whenever that text contained "stop" anywhere (B1). A ``stop`` is
recognised by its parsed kind and leads to the same page without a model call. Every
outcome is typed and counted in :class:`WorldStats`; a page the model could not write, after
the role's retries, is a ``StepOutcome(error=...)`` (the core keeps it as a failed leaf worth
``low``, never evaluated), not an empty page searched further (B5).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

from websynthesis.counters import Counters
from websynthesis.data.tasks import Task
from websynthesis.roles.client import ModelClient
from websynthesis.roles.parsing import Failure
from websynthesis.roles.prompts import WorldModelInput
from websynthesis.search import StepOutcome
from websynthesis.synthesis.state import Goal, WebState
from websynthesis.web.actions import Action, ActionKind
from websynthesis.web.observation import parse_axtree

WORLD_MODEL = "world_model"


class Unsearchable(Exception):
    """A task the world cannot start (no first page): listed as skipped, never searched."""


class WebWorld(ABC):
    """What the search needs of the web. ``imagined`` is ``True`` when pages are predicted."""

    imagined: bool = False

    @abstractmethod
    async def reset(self, task: Task) -> WebState:
        """The task's first state; raises :class:`Unsearchable` when there is none."""

    @abstractmethod
    async def step(self, state: WebState, action: Action) -> StepOutcome[WebState]:
        """The state ``action`` leads to from ``state`` (a stop included; see ``World.step``)."""

    def goal(self, task: Task) -> Goal:
        """What the roles are told about ``task``, asked after :meth:`reset` started it.

        By default the task file's intent and sites (:meth:`Goal.from_task`); a live site whose
        instruction is only known once the page is up (MiniWoB++) overrides it.
        """
        return Goal.from_task(task)

    def close(self) -> None:  # noqa: B027 (optional hook: most worlds hold nothing)
        """Release what the world holds (browsers); nothing for a world model."""


class BrowserWorld(WebWorld):
    """A live site made reversible by reset and replay, for the same search code.

    A search visits states in any order, and a browser only moves forward, so every state
    carries its action prefix (:attr:`WebState.actions`, from :meth:`reset`'s first page).
    To implement, subclass and define:

    - :meth:`reset`: start an episode of ``task`` (under the task's fixed seed) and return
      ``WebState(task.task_id, first_page)``; raise :class:`Unsearchable` if the task has no
      first page. A browser that fails is not the task's fault: let that error propagate
      (synthesize.py then leaves the task unrecorded, so a rerun tries it again).
    - :meth:`step`: reach ``state`` (reset, then replay ``state.actions``, or reuse a browser
      already there) and execute ``action``. Return ``StepOutcome(state.after(action, page),
      env_reward=r, terminal=done)`` with the task's reward ``r`` in [0, 1] (``None`` if the
      site gives none; the policy then asks the reward model) and ``done`` when the episode
      ended. An action the page refuses is still a transition (usually to the same page);
      ``StepOutcome(state, error=...)`` is for an environment failure (crash, timeout), which
      the search keeps as a failed leaf. A ``stop`` must not touch the browser: return
      ``state.after(action)`` with the task's reward for the answer.

    Calls come from many trees at once on one event loop: run blocking browser work in
    worker threads (``asyncio.to_thread``) over a pool of browsers, and stop the browsers in
    :meth:`close`. Override :meth:`goal` when the site, not the task file, says what to do.
    """

    imagined = False


@dataclass
class WorldStats(Counters):
    """What the world did: ``steps`` asked, ``stops`` answered without a model, ``predicted``
    pages, ``accepted_malformed`` pages kept despite structural errors, ``failed`` by kind."""

    steps: int = 0
    stops: int = 0
    predicted: int = 0
    accepted_malformed: int = 0
    failed: Counter[str] = field(default_factory=Counter)


class ModelWorld(WebWorld):
    """The world-model role predicts the next page.

    Args:
        client: asks the ``world_model`` role (its retries re-ask unusable pages).
        accept_malformed: keep a page that still has structural errors after the retries
            (its repaired rendering) instead of failing the step.
    """

    imagined = True

    def __init__(self, client: ModelClient, *, accept_malformed: bool = False) -> None:
        self.client = client
        self.accept_malformed = accept_malformed
        self.stats = WorldStats()

    async def reset(self, task: Task) -> WebState:
        """The first page the task config carries (``state``): WebSynthesis starts from it."""
        if not task.state or not task.state.strip():
            raise Unsearchable("the task has no first page (state)")
        page = parse_axtree(task.state)
        if not page.nodes:
            raise Unsearchable("the first page has no elements")
        if page.errors and not self.accept_malformed:
            raise Unsearchable(f"the first page has structural errors: {page.errors[0]}")
        return WebState(task.task_id, page)

    async def step(self, state: WebState, action: Action) -> StepOutcome[WebState]:
        self.stats.steps += 1
        if action.kind is ActionKind.STOP:
            self.stats.stops += 1
            return StepOutcome(state.after(action))
        question = WorldModelInput(state.observation, action, state.actions)
        (outcome,) = await self.client.run(WORLD_MODEL, [question])
        page = outcome.value
        if page is not None and (
            outcome.ok or (self.accept_malformed and outcome.failure is Failure.MALFORMED_TREE)
        ):
            self.stats.predicted += 1
            self.stats.accepted_malformed += not outcome.ok
            return StepOutcome(state.after(action, page))
        kind = str(outcome.failure)
        self.stats.failed[kind] += 1
        detail = f": {outcome.detail}" if outcome.detail else ""
        return StepOutcome(state, error=f"{kind}{detail}"[:500])
