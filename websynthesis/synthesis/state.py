"""What a web search works on: a page with the actions that led to it, and the task's goal.

A node's state is a :class:`WebState`: the page (an :class:`AXTree`) and the action prefix
from the task's first page. The page is what the policy, the world model and the reward model
read; the prefix is what a :class:`~websynthesis.synthesis.world.BrowserWorld` replays to reach
the page again on a live site, and the world model's "earlier actions".

The history a prompt shows (:func:`history`) is rebuilt from the tree path, never stored as a
string, so search, training data and evaluation format it with the one formatter of
:mod:`websynthesis.roles.prompts` (the reference kept a separate trace string per node, in a
different format from its training data: audit D6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websynthesis.data.tasks import Task
from websynthesis.roles.prompts import Step
from websynthesis.search import Node
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, action_set
from websynthesis.web.actions import Action, parse_action
from websynthesis.web.observation import AXTree, parse_axtree


@dataclass(frozen=True, slots=True)
class WebState:
    """A page of one task, reached from the task's first page by ``actions``."""

    task_id: str
    observation: AXTree
    actions: tuple[Action, ...] = ()
    # Why a live page refused the last action (BrowserGym's ``last_action_error``: the page
    # is unchanged), None when it took it. Only a browser world knows; the reward model's
    # training data labels such a step a dead end (websynthesis/training/reward_data.py).
    refused: str | None = None

    def after(
        self, action: Action, observation: AXTree | None = None, *, refused: str | None = None
    ) -> WebState:
        """The state ``action`` leads to: ``observation``, or this page again (a stop)."""
        page = self.observation if observation is None else observation
        return WebState(self.task_id, page, (*self.actions, action), refused)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "observation": self.observation.render(),
            "actions": [action.to_string() for action in self.actions],
        }
        if self.refused is not None:
            data["refused"] = self.refused
        return data

    @classmethod
    def from_json(cls, task_id: str, data: dict[str, Any]) -> WebState:
        actions = tuple(parse_action(text) for text in data["actions"])
        refused = str(data["refused"]) if data.get("refused") else None
        return cls(task_id, parse_axtree(data["observation"]), actions, refused)


@dataclass(frozen=True, slots=True)
class Goal:
    """What the policy, reward and reflection roles are told about the task, and the actions
    its environment takes (its declared action set)."""

    task_id: str
    objective: str
    allowed_sites: tuple[str, ...] = ()
    actions: ActionSet = WEBARENA_ACTIONS

    @classmethod
    def from_task(cls, task: Task) -> Goal:
        """The intent, the start URL's site as the one ``goto`` may visit, and the task's
        action set (WebArena's when the task names none).

        A task without an http(s) start URL lists its site names, which the prompt shows but
        the ``goto`` check cannot enforce.
        """
        parts = urlsplit(task.start_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            sites: tuple[str, ...] = (f"{parts.scheme}://{parts.netloc}",)
        else:
            sites = task.sites
        return cls(task.task_id, task.intent, sites, action_set(task.actions))


WebNode = Node[WebState, Action]


def history(node: WebNode) -> tuple[Step, ...]:
    """The steps from the root to ``node``: each the page it was taken on, reasoning, action."""
    steps = []
    for child in node.path()[1:]:
        assert child.parent is not None and child.action is not None
        steps.append(Step(child.parent.state.observation, child.thought, child.action))
    return tuple(steps)


def encode_action(action: Action) -> str:
    return action.to_string()
