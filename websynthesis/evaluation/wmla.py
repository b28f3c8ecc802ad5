"""World-Model Look-Ahead (WebEvolver's WMLA): imagine each candidate's future, run the best.

At a step, up to ``candidates`` distinct actions are proposed: the greedy one first, then
samples asked, by a line appended to the policy's question, to differ from the candidates
found so far (WebEvolver's "Please generate actions different from ..."). Samples
:func:`~websynthesis.web.actions.equivalent` to an earlier candidate are dropped.

Every candidate then gets a real simulation, ``depth`` steps deep: the world model predicts the
page after the candidate, the policy acts on that imagined page, the world model predicts the
next one, and so on; an imagined ``stop`` ends the simulation early. All candidates advance
together, one batched world-model call and one batched policy call per level. (The reference
gave each candidate its own world-model endpoint and, with a single endpoint configured,
silently judged two of three candidates on an *empty* simulation.) A ``stop`` candidate is not
simulated: its answer is the outcome the judge scores.

The judge scores each imagined future on {0, 0.5, 1} (complete / on track / wrong). A
candidate whose simulation produced no page at all (the world model gave no tree, even after
its retries) or whose verdict could not be read is *unscored*, never judged on nothing.

**Choice and tie-break.** The highest score wins; among equal scores the earliest candidate
wins, i.e. the greedy action, then the samples in the order they were drawn (WebEvolver's
argmax keeps the first maximum too). Unscored candidates rank below every scored one; if none
is scored, the greedy candidate (the first valid one) is executed and the choice is marked
``fallback``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from websynthesis.backends.types import Message
from websynthesis.roles.client import ModelClient, Role
from websynthesis.roles.parsing import Decision
from websynthesis.roles.prompts import JudgeInput, PolicyInput, Step, WorldModelInput
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet
from websynthesis.web.actions import Action, ActionKind, equivalent
from websynthesis.web.observation import AXTree

GREEDY_ROLE = "policy_greedy"
DIFFER_ROLE = "policy_differ"
_SEED_MODULUS = 2**31


@dataclass(frozen=True)
class LookAheadSettings:
    """``candidates`` (k <= 3 in WebEvolver), ``depth`` (d), sampling temperature of the
    alternatives, and ``from_step``: the first step that looks ahead (WebEvolver: 2)."""

    candidates: int = 3
    depth: int = 1
    temperature: float = 1.0
    from_step: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.depth < 1 or self.from_step < 0:
            raise ValueError(f"bad WMLA settings {self}: candidates, depth >= 1, from_step >= 0")
        if self.temperature <= 0:
            raise ValueError("the alternatives must be sampled: wmla.temperature > 0")


@dataclass(frozen=True)
class DifferingInput(PolicyInput):
    """The policy's question, plus the actions the answer must differ from."""

    avoid: tuple[Action, ...] = ()


class DifferingPolicy(Role):
    """The policy role whose question ends with a request to differ from ``avoid``."""

    def __init__(self, base: Role, temperature: float) -> None:
        super().__init__("policy", replace(base.settings, temperature=temperature))

    def messages(self, inp: Any) -> tuple[Message, ...]:
        messages = super().messages(inp)
        avoid = getattr(inp, "avoid", ())
        if not avoid:
            return messages
        shown = "; ".join(action.to_string() for action in avoid)
        last = messages[-1]
        request = f"\n\nPlease generate an action different from: {shown}."
        return (*messages[:-1], {**last, "content": last["content"] + request})


def register_roles(client: ModelClient, config: LookAheadSettings) -> None:
    """Add the greedy and the differing variants of the client's policy role (idempotent).

    They count their outcomes under their own names in ``client.stats``.
    """
    base = client.role("policy")
    client.roles.setdefault(GREEDY_ROLE, Role("policy", replace(base.settings, temperature=0.0)))
    client.roles.setdefault(DIFFER_ROLE, DifferingPolicy(base, config.temperature))


def stable_seed(*parts: Any) -> int:
    """A sampling seed from ``parts``: reruns ask the same questions with the same seeds."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_MODULUS


@dataclass
class Candidate:
    """One candidate action, its imagined future and the judge's verdict on it."""

    source: str  # "greedy" or "sample"
    thought: str
    action: Action
    pages: list[AXTree] = field(default_factory=list)
    imagined: list[str] = field(default_factory=list)  # the policy's actions inside the dream
    ended: str = ""  # why the simulation stopped early ("" = it reached the depth)
    score: float | None = None
    judge_reason: str = ""
    judge_failure: str | None = None

    @property
    def is_stop(self) -> bool:
        return self.action.kind is ActionKind.STOP

    def to_dict(self, *, pages: bool) -> dict[str, Any]:
        """For logs; ``pages`` includes the imagined pages' text (large)."""
        data: dict[str, Any] = {
            "source": self.source,
            "action": self.action.to_string(),
            "thought": self.thought,
            "simulated_steps": len(self.pages),
            "imagined_actions": self.imagined,
            "ended": self.ended,
            "score": self.score,
            "judge_reason": self.judge_reason,
            "judge_failure": self.judge_failure,
        }
        if pages:
            data["pages"] = [page.render() for page in self.pages]
        return data


@dataclass
class LookAhead:
    """One step's look-ahead: the candidates in proposal order and which one was chosen."""

    candidates: list[Candidate]
    chosen: int | None
    fallback: bool = False
    proposal_failures: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def decision(self) -> Decision | None:
        if self.chosen is None:
            return None
        best = self.candidates[self.chosen]
        return Decision(best.thought, best.action)

    def to_dict(self, *, pages: bool = False) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "fallback": self.fallback,
            "duplicates": self.duplicates,
            "proposal_failures": dict(self.proposal_failures),
            "candidates": [c.to_dict(pages=pages) for c in self.candidates],
        }


@dataclass(frozen=True)
class _Pending:
    """A candidate's next simulated step: ``action`` (with ``thought``) taken on ``page``."""

    page: AXTree
    action: Action
    thought: str
    steps: tuple[Step, ...]

    def then(self) -> tuple[Step, ...]:
        """The history once this step is taken."""
        return (*self.steps, Step(self.page, self.thought, self.action))


def choose(candidates: list[Candidate]) -> tuple[int | None, bool]:
    """The index to execute and whether it is the fallback (see the module docstring)."""
    if not candidates:
        return None, False
    scored = [(c.score, -i) for i, c in enumerate(candidates) if c.score is not None]
    if not scored:
        return 0, True
    _, negative_index = max(scored)
    return -negative_index, False


@dataclass(frozen=True)
class _Situation:
    """The real step being planned: what every question of its look-ahead shares."""

    objective: str
    observation: AXTree
    history: tuple[Step, ...]
    seed_key: Any
    sites: tuple[str, ...]
    actions: ActionSet = WEBARENA_ACTIONS

    def policy_input(self, page: AXTree, history: tuple[Step, ...]) -> PolicyInput:
        return PolicyInput(self.objective, page, history, self.sites, self.actions)


class LookAheadPlanner:
    """Runs WMLA for an agent: ``await planner.plan(objective, page, history, seed_key)``.

    Stateless between calls, so concurrent episodes can share one planner.
    """

    def __init__(self, client: ModelClient, config: LookAheadSettings, policy_role: str = "policy"):
        self.client, self.config, self.policy_role = client, config, policy_role
        register_roles(client, config)

    async def plan(
        self,
        objective: str,
        observation: AXTree,
        history: tuple[Step, ...],
        seed_key: Any,
        allowed_sites: tuple[str, ...] = (),
        actions: ActionSet = WEBARENA_ACTIONS,
    ) -> LookAhead:
        """Propose, simulate, judge and choose; ``seed_key`` identifies the step for seeds;
        candidates come from the environment's declared ``actions``."""
        now = _Situation(objective, observation, history, seed_key, allowed_sites, actions)
        look = await self._propose(now)
        await self._simulate(now, look.candidates)
        await self._judge(now, look.candidates)
        look.chosen, look.fallback = choose(look.candidates)
        return look

    async def _propose(self, now: _Situation) -> LookAhead:
        look = LookAhead(candidates=[], chosen=None)
        [greedy] = await self.client.run(
            GREEDY_ROLE, [now.policy_input(now.observation, now.history)]
        )
        self._add(look, greedy, "greedy")
        for draw in range(1, self.config.candidates):
            avoid = tuple(c.action for c in look.candidates)
            question = DifferingInput(
                now.objective, now.observation, now.history, now.sites, now.actions, avoid=avoid
            )
            seed = stable_seed(now.seed_key, "candidate", draw)
            [sample] = await self.client.run(DIFFER_ROLE, [question], seeds=[seed])
            self._add(look, sample, "sample")
        return look

    @staticmethod
    def _add(look: LookAhead, outcome: Any, source: str) -> None:
        if not outcome.ok:
            look.proposal_failures[str(outcome.failure)] += 1
            return
        decision: Decision = outcome.value
        if any(equivalent(decision.action, c.action) for c in look.candidates):
            look.duplicates += 1
            return
        look.candidates.append(Candidate(source, decision.thought, decision.action))

    async def _simulate(self, now: _Situation, candidates: list[Candidate]) -> None:
        """Advance every non-stop candidate ``depth`` imagined steps, level by level."""
        real_actions = tuple(step.action for step in now.history)
        # Per candidate: the page acted on, the action (and its thought), the steps before it.
        frontier: dict[int, _Pending] = {
            i: _Pending(now.observation, c.action, c.thought, now.history)
            for i, c in enumerate(candidates)
            if not c.is_stop
        }
        for level in range(1, self.config.depth + 1):
            if not frontier:
                return
            order = list(frontier)
            inputs = []
            for i in order:
                pending = frontier[i]
                dreamt = tuple(s.action for s in pending.steps[len(now.history) :])
                inputs.append(WorldModelInput(pending.page, pending.action, real_actions + dreamt))
            outcomes = await self.client.run("world_model", inputs)
            for i, outcome in zip(order, outcomes, strict=True):
                if outcome.value is None:
                    candidates[i].ended = f"world_model:{outcome.failure}"
                    del frontier[i]
                else:
                    candidates[i].pages.append(outcome.value)
            if level < self.config.depth:
                await self._act_in_dream(now, candidates, frontier, level)

    async def _act_in_dream(
        self,
        now: _Situation,
        candidates: list[Candidate],
        frontier: dict[int, _Pending],
        level: int,
    ) -> None:
        """The policy's next action on each candidate's latest imagined page."""
        order = list(frontier)
        histories = [frontier[i].then() for i in order]
        questions = [
            now.policy_input(candidates[i].pages[-1], steps)
            for i, steps in zip(order, histories, strict=True)
        ]
        seeds = [stable_seed(now.seed_key, "dream", i, level) for i in order]
        outcomes = await self.client.run(self.policy_role, questions, seeds=seeds)
        for i, steps, outcome in zip(order, histories, outcomes, strict=True):
            if not outcome.ok:
                candidates[i].ended = f"policy:{outcome.failure}"
                del frontier[i]
                continue
            decision: Decision = outcome.value
            candidates[i].imagined.append(decision.action.to_string())
            if decision.action.kind is ActionKind.STOP:
                candidates[i].ended = "imagined_stop"
                del frontier[i]
            else:
                page = candidates[i].pages[-1]
                frontier[i] = _Pending(page, decision.action, decision.thought, steps)

    async def _judge(self, now: _Situation, candidates: list[Candidate]) -> None:
        """Score stops on their answer and the others on their imagined pages."""
        judged = [i for i, c in enumerate(candidates) if c.is_stop or c.pages]
        inputs = [
            JudgeInput(
                now.objective,
                now.history,
                now.observation,
                candidates[i].action,
                future=tuple(candidates[i].pages),
                answer=candidates[i].action.text if candidates[i].is_stop else None,
            )
            for i in judged
        ]
        outcomes = await self.client.run("judge", inputs) if inputs else []
        for i, outcome in zip(judged, outcomes, strict=True):
            if outcome.ok:
                candidates[i].score = outcome.value.score
                candidates[i].judge_reason = outcome.value.reason
            else:
                candidates[i].judge_failure = str(outcome.failure)
