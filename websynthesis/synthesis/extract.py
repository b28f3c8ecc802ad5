"""From a searched tree to training data: valuable, rollback and world-model examples.

Every example is a chat conversation built by the roles' own prompt builders, so a policy is
trained on exactly the prompt it is asked at search time and at evaluation (the reference
trained on another summariser, step numbering and layout: D6), with the target as the
assistant's last turn, and :class:`~websynthesis.data.chat.ChatExample` rows that train.py
reads as they are.

- **valuable**: each step of the best successful path (objective + history + page ->
  ``format_response(thought, action)``).
- **rollback**, for each step of that path, the ``rollback_per_step`` worst failed siblings
  (:meth:`SearchResult.failed_siblings`: strictly worse, nothing successful below; the
  reference took any lowest sibling, D5). The reflection role explains why the failed
  action does not help and ends with ``go_back``; that gives two examples (audit 5.4): the
  failed child's page -> reflection + ``go_back``, and the parent's page with the failed
  step and the ``go_back`` step in the history -> the correct action. The reference never
  produced these (D1). Siblings whose page the world could not simulate, whose score is
  unknown or that stopped are skipped: there is no page to go back from; in an environment
  whose declared actions lack ``go_back`` every rollback is skipped (counted).
- **transitions**: every (page, action) -> next page the world wrote in the tree, as a
  world-model example in the world-model family's answer form (the whole page, or what
  changed), flagged ``imagined`` when a world model predicted it; its ``meta`` also holds
  both whole pages and the earlier actions, so
  :func:`websynthesis.data.transitions.read_transitions` reads the file as transitions.

Targets are checked before they are kept: a policy target must read back through the
policy's own parser to the same action, valid on the page as its prompt shows it; a
transition's page must read back through the world model's parser. What fails is counted in
:attr:`Extracted.dropped` and left out: untrusted output never reaches the training data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websynthesis.data.chat import ChatExample
from websynthesis.data.policy_examples import check_visible, policy_example, visible_page
from websynthesis.data.world_model_data import role_target
from websynthesis.roles.client import ModelClient
from websynthesis.roles.parsing import failure_label
from websynthesis.roles.prompts import PolicyInput, ReflectionInput, Step, WorldModelInput
from websynthesis.search import SearchResult, TerminalKind
from websynthesis.synthesis.policy import POLICY
from websynthesis.synthesis.state import Goal, WebNode, WebState, history
from websynthesis.synthesis.store import TRAJECTORY_KINDS
from websynthesis.synthesis.world import WORLD_MODEL
from websynthesis.web.actions import Action, ActionKind
from websynthesis.web.observation import AXTree

REFLECTION = "reflection"
GO_BACK = Action(ActionKind.GO_BACK)


@dataclass
class Extracted:
    """One tree's examples by kind, and what was dropped (``kind/why``)."""

    valuable: list[ChatExample] = field(default_factory=list)
    rollback: list[ChatExample] = field(default_factory=list)
    transitions: list[ChatExample] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The examples as JSON rows, by kind (what trees.jsonl stores)."""
        return {
            kind: [example.to_row() for example in getattr(self, kind)] for kind in TRAJECTORY_KINDS
        }

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {kind: len(getattr(self, kind)) for kind in TRAJECTORY_KINDS}
        return counts | {"dropped": dict(sorted(self.dropped.items()))}


class Extractor:
    """Builds one tree's examples; asks the reflection role once per tree, for all triples.

    Args:
        client: the roles (policy and world-model prompts, reflection, parsers).
        imagined: whether the tree's pages were predicted (``meta.imagined``).
        rollback_per_step: failed siblings used per step of the best path, worst first.
    """

    def __init__(self, client: ModelClient, *, imagined: bool, rollback_per_step: int = 1) -> None:
        if rollback_per_step < 0:
            raise ValueError("rollback_per_step must be >= 0")
        self.client = client
        self.imagined = imagined
        self.rollback_per_step = rollback_per_step

    async def extract(self, result: SearchResult[WebState, Action], goal: Goal) -> Extracted:
        out = Extracted()
        path = result.best_path()
        if path is not None:
            for node in path[1:]:
                self._keep(out, "valuable", self._step_example(goal, node))
            await self._rollbacks(out, result, path, goal)
        for node in result.root.walk()[1:]:
            if node.terminal is not TerminalKind.WORLD_ERROR and not _is_stop(node):
                self._keep(out, "transitions", self._transition(goal, node))
        return out

    # --- valuable ------------------------------------------------------------------------

    def _step_example(self, goal: Goal, node: WebNode) -> ChatExample | str:
        parent = _parent(node)
        meta = self._meta("valuable", goal, node) | {"parent": parent.id}
        return self._policy_example(
            goal, parent.state.observation, history(parent), node.thought, _action(node), meta
        )

    def _policy_example(
        self,
        goal: Goal,
        page: AXTree,
        steps: tuple[Step, ...],
        thought: str,
        action: Action,
        meta: dict[str, Any],
    ) -> ChatExample | str:
        question = PolicyInput(goal.objective, page, steps, goal.allowed_sites, goal.actions)
        return policy_example(self.client.role(POLICY), question, thought, action, meta)

    # --- rollback ------------------------------------------------------------------------

    async def _rollbacks(
        self,
        out: Extracted,
        result: SearchResult[WebState, Action],
        path: list[WebNode],
        goal: Goal,
    ) -> None:
        triples: list[tuple[WebNode, WebNode]] = []  # (failed sibling, correct child)
        for chosen, failures in result.failed_siblings(path):
            usable = []
            for sibling in failures:
                why = _unusable(sibling)
                if why is None:
                    usable.append(sibling)
                else:
                    out.dropped[f"rollback/skipped_{why}"] += 1
            usable.sort(key=lambda n: (result.config.value(n), n.id))
            triples += [(failed, chosen) for failed in usable[: self.rollback_per_step]]
        if not triples:
            return
        if ActionKind.GO_BACK not in goal.actions:
            # The reflection's target is go_back, which this environment does not take
            # (MiniWoB++'s one-page tasks): counted, and no reflection call spent on it.
            out.dropped["rollback/skipped_go_back_undeclared"] += len(triples)
            return
        questions = [
            ReflectionInput(
                goal.objective,
                _action(failed),
                _parent(failed).state.observation,
                failed.state.observation,
                history(_parent(failed)),
            )
            for failed, _ in triples
        ]
        reflections = await self.client.run(REFLECTION, questions)
        for (failed, chosen), reflection in zip(triples, reflections, strict=True):
            if not reflection.ok or reflection.value is None:
                out.dropped[f"rollback/reflection_{reflection.failure}"] += 1
                continue
            pair = self._rollback_pair(goal, failed, chosen, reflection.value.reason)
            bad = [why for why in pair if isinstance(why, str)]
            if bad:
                out.dropped[f"rollback/{bad[0]}"] += 1
                continue
            out.rollback += [example for example in pair if isinstance(example, ChatExample)]

    def _rollback_pair(
        self, goal: Goal, failed: WebNode, chosen: WebNode, reason: str
    ) -> tuple[ChatExample | str, ChatExample | str]:
        parent = _parent(failed)
        tried = history(failed)
        base = {"failed": failed.id, "correct": chosen.id, "parent": parent.id}
        reflect_meta = self._meta("rollback", goal, failed) | base | {"stage": "reflect"}
        reflect = self._policy_example(
            goal, failed.state.observation, tried, reason, GO_BACK, reflect_meta
        )
        went_back = (*tried, Step(failed.state.observation, reason, GO_BACK))
        correct_meta = self._meta("rollback", goal, chosen) | base | {"stage": "correct"}
        correct = self._policy_example(
            goal, parent.state.observation, went_back, chosen.thought, _action(chosen), correct_meta
        )
        return reflect, correct

    # --- transitions ---------------------------------------------------------------------

    def _transition(self, goal: Goal, node: WebNode) -> ChatExample | str:
        parent = _parent(node)
        action = _action(node)
        role = self.client.role(WORLD_MODEL)
        question = WorldModelInput(parent.state.observation, action, parent.state.actions)
        target = role_target(role, parent.state.observation, node.state.observation)
        parsed = role.parse(target, question)
        if not parsed.ok:
            return failure_label(parsed)
        hidden = check_visible(action, visible_page(role, parent.state.observation))
        if hidden is not None:
            return hidden.split(":", 1)[0]
        messages = (*role.messages(question), {"role": "assistant", "content": target})
        meta = self._meta("transition", goal, node) | {
            "parent": parent.id,
            "observation": parent.state.observation.render(),  # whole: the prompt may cut it
            "next_observation": node.state.observation.render(),  # the target may be a change
            "history": [earlier.to_string() for earlier in parent.state.actions],
        }
        return ChatExample(messages=messages, meta=meta)

    # --- shared --------------------------------------------------------------------------

    def _meta(self, kind: str, goal: Goal, node: WebNode) -> dict[str, Any]:
        return {
            "kind": kind,
            "task_id": goal.task_id,
            "node": node.id,
            "depth": node.depth,
            "action": _action(node).to_string(),
            "reward": node.reward,
            "q": node.q,
            "terminal": None if node.terminal is None else node.terminal.value,
            "imagined": self.imagined,
        }

    @staticmethod
    def _keep(out: Extracted, kind: str, example: ChatExample | str) -> None:
        if isinstance(example, ChatExample):
            getattr(out, kind).append(example)
        else:
            out.dropped[f"{kind}/{example}"] += 1


def _unusable(sibling: WebNode) -> str | None:
    """Why a failed sibling cannot teach going back, or ``None`` when it can."""
    if sibling.terminal is TerminalKind.WORLD_ERROR:
        return "world_error"
    if sibling.reward is None:
        return "unscored"
    if _is_stop(sibling):
        return "stop"
    return None


def _is_stop(node: WebNode) -> bool:
    return _action(node).kind is ActionKind.STOP


def _parent(node: WebNode) -> WebNode:
    assert node.parent is not None, "the root has no step"
    return node.parent


def _action(node: WebNode) -> Action:
    assert node.action is not None, "the root has no action"
    return node.action
