"""The live-environment API: what an agent loop, an evaluator and the search see of a browser.

It is deliberately smaller than BrowserGym's gym interface: observations are already the
canonical accessibility-tree text the models are trained on (BrowserGym's element ids, the
``bid``s, are the ids), and actions are our parsed :class:`~websynthesis.web.actions.Action`.

Two kinds of failure are kept apart, because only one of them is the agent's fault:

- An action the page refuses (unknown id, typing into a link, a Playwright timeout on a
  click) is the agent's: the episode goes on and :attr:`Observation.last_action_error` says
  why, exactly as BrowserGym reports it.
- A browser that crashed, hung past the step timeout or could not be started is the
  environment's: :attr:`StepResult.error` is set (with ``done=True``), or :meth:`WebEnv.reset`
  raises :class:`EnvError`. Such an episode is recorded as an error, never as an agent
  failure, and the next :meth:`WebEnv.reset` runs on a freshly started browser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from websynthesis.web.actions import Action
from websynthesis.web.observation import AXTree


class EnvError(RuntimeError):
    """The browser failed beyond recovery for this episode (crash, hang, failed start).

    Raised by :meth:`WebEnv.reset` (after one restart attempt) and by a :meth:`WebEnv.step`
    without a running episode. Never raised for a bad action: that is ``last_action_error``.
    """


@dataclass(frozen=True)
class Observation:
    """One observation of the active page.

    ``text`` is the canonical tree text, headed by ``Tab 0 (current): title`` (all open tabs,
    ``|``-separated) and a blank line; ``tree`` is ``parse_axtree(text)``, so
    ``tree.render() == text``. Element ids are BrowserGym bids (``"13"``, ``"a51"`` inside an
    iframe); text nodes and the root, which have no bid, get ids no bid can take (``"TA13"``,
    ``"RA0"``; see :mod:`websynthesis.env.observe`), so every line has an id. An action on
    one of those is refused by the page (``last_action_error``).
    ``goal`` is the task's instruction (MiniWoB's utterance, WebArena's intent).
    ``open_urls`` lists every tab's URL in tab order; ``url`` is the active tab's.
    ``last_action_error`` is ``None`` after a successful action and after a reset.
    """

    tree: AXTree
    text: str
    url: str
    goal: str
    open_urls: tuple[str, ...]
    last_action_error: str | None = None


@dataclass(frozen=True)
class StepResult:
    """The outcome of one :meth:`WebEnv.step`.

    ``reward`` is the task's own reward (MiniWoB: 1.0 on success, else 0.0; WebArena: always
    0.0 here, the evaluators score the episode afterwards). ``done``: the task ended the
    episode, the agent stopped (``stop [...]``), or the environment failed. ``truncated``:
    the episode reached ``EnvConfig.max_steps``. ``error``: the environment failed (see the
    module docstring); ``observation`` is then the last good one. ``info`` holds the task's
    raw validation data (MiniWoB's ``RAW_REWARD_GLOBAL``, ``REWARD_REASON``, ...) for logs.
    """

    observation: Observation
    reward: float
    done: bool
    truncated: bool = False
    error: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


class WebEnv(Protocol):
    """A live browser environment running one episode at a time. Not thread-safe: use one
    environment per thread, or :class:`websynthesis.env.pool.EnvPool`."""

    def reset(self, task: str, seed: int) -> Observation:
        """Start an episode of ``task`` (a MiniWoB name such as ``click-button``, or a
        WebArena ``task_id``) with ``seed``; raises :class:`EnvError` if no browser starts."""
        ...

    def step(self, action: Action) -> StepResult:
        """Execute ``action`` in the current episode (one BrowserGym step per action)."""
        ...

    def read_page(self, url: str | None = None, script: str | None = None) -> str:
        """For evaluators after an episode (WebArena ``program_html``): go to ``url`` (``None``:
        stay on the active page) and return the JavaScript expression ``script`` as text
        (``None``: the page's HTML). Raises :class:`EnvError` if the browser fails."""
        ...

    def close(self) -> None:
        """Stop the browser and everything it started; idempotent."""
        ...
