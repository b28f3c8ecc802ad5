"""WebEvolver's trajectory synthesis: the world model as the web server, for failed queries.

A query the agent failed on the live site (its objective and first page) is played again in
imagination: the policy acts, :class:`~websynthesis.synthesis.world.ModelWorld` predicts each
next page, for at most ``max_steps`` steps (WebEvolver: 7) or until the policy stops. The
judge reads the whole imagined trajectory and its final page; a verdict at or above
``threshold`` accepts it, and every step becomes a policy example (``meta.imagined: true``) in
the agent's own prompt format, checked like every other target
(:func:`~websynthesis.data.policy_examples.policy_example`).

Model output is untrusted at every step, and each outcome is counted in :class:`ImagineStats`:
a policy answer without a usable action is a failure step (``max_failures`` in a row end the
trajectory, which is then discarded), a page the world model cannot write ends it as
``world_error``, a judge without a verdict discards it (``judge/<kind>``). Every query's
sampling seed derives from ``seed`` and the query, so a rerun imagines the same trajectories.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from websynthesis.counters import Counters
from websynthesis.data.chat import ChatExample
from websynthesis.data.policy_examples import policy_example
from websynthesis.evaluation.wmla import stable_seed
from websynthesis.roles.client import ModelClient
from websynthesis.roles.parsing import failure_label
from websynthesis.roles.prompts import JudgeInput, PolicyInput, Step
from websynthesis.synthesis.policy import POLICY
from websynthesis.synthesis.state import WebState
from websynthesis.synthesis.world import ModelWorld
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet
from websynthesis.web.actions import ActionKind
from websynthesis.web.observation import AXTree

JUDGE = "judge"


@dataclass(frozen=True)
class Query:
    """A task instance to imagine: its id, objective, first page and action set."""

    task_id: str
    objective: str
    page: AXTree
    allowed_sites: tuple[str, ...] = ()
    actions: ActionSet = WEBARENA_ACTIONS


@dataclass(frozen=True)
class ImagineSettings:
    """``max_steps`` imagined steps per query; ``threshold``: the judge verdict that accepts;
    ``max_failures`` unusable policy answers in a row end a trajectory."""

    max_steps: int = 7
    threshold: float = 1.0
    max_failures: int = 3
    seed: int = 0


@dataclass
class ImagineStats(Counters):
    """Per query: ``accepted`` or why not; per step: the policy's failures by kind."""

    outcomes: Counter[str] = field(default_factory=Counter)
    policy_failures: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    steps: int = 0


@dataclass
class _Trajectory:
    steps: list[tuple[PolicyInput, Step]] = field(default_factory=list)
    answer: str | None = None
    final: AXTree | None = None


async def imagine(
    client: ModelClient, queries: list[Query], config: ImagineSettings
) -> tuple[list[ChatExample], ImagineStats]:
    """Imagine every query at once (the client batches their requests into waves)."""
    stats = ImagineStats()
    world = ModelWorld(client)
    results = await asyncio.gather(*(_play(client, world, q, config, stats) for q in queries))
    examples: list[ChatExample] = []
    for query, trajectory in zip(queries, results, strict=True):
        if trajectory is not None:
            examples += _examples(client, query, trajectory, stats)
    return examples, stats


async def _play(
    client: ModelClient,
    world: ModelWorld,
    query: Query,
    config: ImagineSettings,
    stats: ImagineStats,
) -> _Trajectory | None:
    state = WebState(query.task_id, query.page)
    trajectory = _Trajectory()
    history: tuple[Step, ...] = ()
    failures = 0
    for index in range(config.max_steps):
        question = PolicyInput(
            query.objective, state.observation, history, query.allowed_sites, query.actions
        )
        seed = stable_seed(config.seed, query.task_id, index, failures, "imagine")
        [outcome] = await client.run(POLICY, [question], seeds=[seed])
        if not outcome.ok or outcome.value is None:
            stats.policy_failures[failure_label(outcome)] += 1
            failures += 1
            if failures >= config.max_failures:
                stats.outcomes["policy_failures"] += 1
                return None
            continue
        failures = 0
        decision = outcome.value
        stats.steps += 1
        step = Step(state.observation, decision.thought, decision.action)
        trajectory.steps.append((question, step))
        history = (*history, step)
        if decision.action.kind is ActionKind.STOP:
            trajectory.answer = decision.action.text or ""
            break
        transition = await world.step(state, decision.action)
        if transition.error is not None:
            stats.outcomes["world_error"] += 1
            return None
        state = transition.state
    if not trajectory.steps:
        stats.outcomes["no_steps"] += 1
        return None
    trajectory.final = state.observation
    verdict_question = JudgeInput(
        query.objective, history, observation=trajectory.final, answer=trajectory.answer
    )
    [verdict] = await client.run(JUDGE, [verdict_question])
    if not verdict.ok or verdict.value is None:
        stats.outcomes[f"judge/{failure_label(verdict)}"] += 1
        return None
    if verdict.value.score < config.threshold:
        stats.outcomes["rejected"] += 1
        return None
    return trajectory


def _examples(
    client: ModelClient, query: Query, trajectory: _Trajectory, stats: ImagineStats
) -> list[ChatExample]:
    role = client.role(POLICY)
    built = []
    for index, (question, step) in enumerate(trajectory.steps):
        meta = {
            "kind": "imagined",
            "task_id": query.task_id,
            "step": index,
            "action": step.action.to_string(),
            "imagined": True,
        }
        built.append(policy_example(role, question, step.thought, step.action, meta))
    bad = [why for why in built if isinstance(why, str)]
    if bad:
        stats.dropped[bad[0]] += 1
        stats.outcomes["dropped"] += 1
        return []
    stats.outcomes["accepted"] += 1
    return [example for example in built if isinstance(example, ChatExample)]
