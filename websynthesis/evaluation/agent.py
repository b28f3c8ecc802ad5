"""The agent loop: the policy role acting in a live :class:`~websynthesis.env.base.WebEnv`.

The policy is asked exactly as in training: :class:`~websynthesis.roles.prompts.PolicyInput`
with the episode's earlier steps as :class:`~websynthesis.roles.prompts.Step` history, through
the role's one prompt and history formatter. With WMLA on, the step's action comes from
:class:`~websynthesis.evaluation.wmla.LookAheadPlanner` instead.

**Model output is untrusted.** The client already re-asks unparseable samples up to the
role's ``max_retries``. An answer still without a usable action (no action, unparseable, or
refused by the page: ``invalid_action``) is a *failure step*: nothing is executed, the kind is
counted in ``policy_failures``, the step counts toward ``max_steps``, and the policy is asked
again with a fresh seed. After ``max_failures`` failure steps in a row the episode ends
(``end="policy_failures"``), a failure of the agent.

**Environment failures are not the agent's.** A reset that raises, a step whose result carries
``error`` (crashed or hung browser), or any exception from the env ends the episode with
``error`` set; metrics count it apart and a rerun retries it.

Success: MiniWoB++ tasks score themselves (reward > 0 when the episode ends); a task with a
WebArena ``eval`` spec is scored by :func:`~websynthesis.evaluation.webarena_eval.evaluate_task`
on the final answer, URL and live page
(the evaluators read it through ``WebEnv.read_page``, synchronously: the env's calls block on
a pipe to its browser worker, so this pauses other episodes only for the read).

Every executed step is appended to ``transitions.jsonl`` in the raw transition form of
:mod:`websynthesis.data.transitions` (``imagined: false``) plus the episode's coordinates, as
it happens: steps of an episode that later errs or is interrupted stay (they are real).

**Sampling is seeded by the step**, ``(task, seed, attempt, step)``: two arms run on the same
episodes draw the same random numbers (common random numbers: a paired comparison sees the
policies, not the draw). ``draw`` names another stream (the evidence's exploration takes
its pipeline seed's, so that each pipeline seed explores anew); draw 0 is the stream it
always was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websynthesis.data.records import JsonlLog
from websynthesis.data.tasks import Task
from websynthesis.data.transitions import Transition
from websynthesis.env.base import Observation, StepResult, WebEnv
from websynthesis.evaluation.baselines import RandomClick
from websynthesis.evaluation.webarena_eval import AnswerJudge, evaluate_task
from websynthesis.evaluation.wmla import LookAhead, LookAheadPlanner, stable_seed
from websynthesis.roles.client import ModelClient
from websynthesis.roles.parsing import Decision
from websynthesis.roles.prompts import PolicyInput, Step
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, action_names
from websynthesis.web.actions import ActionKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """``max_steps`` per episode (failure steps included); ``max_failures`` failure steps in a
    row end the episode; ``policy_role`` is the role that acts (without WMLA); ``baseline``,
    when set, acts instead of any model (:mod:`websynthesis.evaluation.baselines`)."""

    max_steps: int = 10
    max_failures: int = 3
    policy_role: str = "policy"
    baseline: RandomClick | None = None  # acts instead of the policy role (and of WMLA)
    draw: int = 0  # the sampling stream (see the module docstring)


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run: the env's task name (or WebArena id), its seed and attempt index.

    ``task`` holds the WebArena task when the episode is scored by its ``eval`` spec.
    """

    task_name: str
    seed: int
    attempt: int
    task: Task | None = None
    allowed_sites: tuple[str, ...] = ()
    actions: ActionSet = WEBARENA_ACTIONS  # the environment's declared action set

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.task_name, self.seed, self.attempt)


@dataclass
class Episode:
    """What happened in one episode; :meth:`to_record` is its ``episodes.jsonl`` line."""

    spec: EpisodeSpec
    success: bool | None = None
    reward: float = 0.0
    steps: int = 0
    error: str | None = None
    end: str = ""
    answer: str | None = None
    final_url: str | None = None
    actions: list[str] = field(default_factory=list)
    policy_failures: Counter[str] = field(default_factory=Counter)
    evaluation: dict[str, Any] | None = None
    wmla: list[dict[str, Any]] | None = None
    duration_s: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "task": self.spec.task_name,
            "seed": self.spec.seed,
            "attempt": self.spec.attempt,
            "success": self.success,
            "steps": self.steps,
            "error": self.error,
            "reward": self.reward,
            "end": self.end,
            "answer": self.answer,
            "final_url": self.final_url,
            "actions": self.actions,
            "policy_failures": dict(self.policy_failures),
            "duration_s": round(self.duration_s, 3),
        }
        if self.evaluation is not None:
            record["evaluation"] = self.evaluation
        if self.wmla is not None:
            record["wmla"] = self.wmla
        return record


class Agent:
    """Runs episodes; shares one model client (and its batching) across concurrent episodes."""

    def __init__(
        self,
        client: ModelClient,
        config: AgentSettings,
        *,
        planner: LookAheadPlanner | None = None,
        transitions: JsonlLog | None = None,
        lookahead_log: JsonlLog | None = None,
        judge: AnswerJudge | None = None,
    ) -> None:
        self.client, self.config, self.planner = client, config, planner
        self.transitions, self.lookahead_log, self.judge = transitions, lookahead_log, judge
        self._sampled = client.role(config.policy_role).settings.temperature > 0

    async def run(self, env: WebEnv, spec: EpisodeSpec) -> Episode:
        """One episode on ``env`` (blocking env calls run in a thread); never raises for the
        env or the model."""
        episode = Episode(spec, wmla=[] if self.planner is not None else None)
        started = time.monotonic()
        try:
            await self._play(env, spec, episode)
        finally:
            episode.duration_s = time.monotonic() - started
        return episode

    async def _play(self, env: WebEnv, spec: EpisodeSpec, episode: Episode) -> None:
        try:
            observation = await asyncio.to_thread(env.reset, spec.task_name, spec.seed)
        except Exception as error:  # EnvError, or anything a broken browser raises
            log.warning("reset of %s failed: %s", spec.key, error)
            episode.error, episode.end = f"reset: {error}", "env_error"
            return
        objective = spec.task.intent if spec.task is not None else observation.goal
        history: tuple[Step, ...] = ()
        failures_in_row = 0
        result: StepResult | None = None
        while episode.steps < self.config.max_steps:
            index = episode.steps
            episode.steps += 1
            decision = await self._decide(episode, objective, observation, history, index)
            if decision is None:
                failures_in_row += 1
                if failures_in_row >= self.config.max_failures:
                    episode.end = "policy_failures"
                    break
                continue
            failures_in_row = 0
            action = decision.action
            episode.actions.append(action.to_string())
            try:
                result = await asyncio.to_thread(env.step, action)
            except Exception as error:
                log.warning("step of %s raised: %s", spec.key, error)
                episode.error, episode.end = f"step: {error!r}", "env_error"
                return
            if result.error is not None:
                episode.error, episode.end = result.error, "env_error"
                return
            self._record(spec, objective, index, observation, decision, history, result)
            history = (*history, Step(observation.tree, decision.thought, action))
            observation = result.observation
            episode.reward = result.reward
            if action.kind is ActionKind.STOP:
                episode.answer, episode.end = action.text or "", "stop"
            elif result.done:
                episode.end = "done"
            elif result.truncated:
                episode.end = "max_steps"
            if episode.end:
                break
        episode.end = episode.end or "max_steps"
        episode.final_url = observation.url
        await self._score(env, spec, episode, result)

    async def _decide(
        self,
        episode: Episode,
        objective: str,
        observation: Observation,
        history: tuple[Step, ...],
        index: int,
    ) -> Decision | None:
        """The step's action (by WMLA when on), or ``None`` for a counted failure step."""
        spec = episode.spec
        draw = (f"draw {self.config.draw}",) if self.config.draw else ()
        seed_key = (*spec.key, index, *draw)
        if self.config.baseline is not None:
            return self.config.baseline.decide(observation.tree, stable_seed(*seed_key, "act"))
        if self.planner is not None and index >= self.planner.config.from_step:
            look = await self.planner.plan(
                objective, observation.tree, history, seed_key, spec.allowed_sites, spec.actions
            )
            self._log_lookahead(episode, index, look)
            episode.policy_failures.update(look.proposal_failures)
            if look.decision is None:
                episode.actions.append("<no candidate>")
            return look.decision
        question = PolicyInput(
            objective, observation.tree, history, spec.allowed_sites, spec.actions
        )
        seeds = [stable_seed(*seed_key, "act")] if self._sampled else None
        [outcome] = await self.client.run(self.config.policy_role, [question], seeds=seeds)
        if outcome.ok:
            return outcome.value
        episode.policy_failures[str(outcome.failure)] += 1
        episode.actions.append(f"<{outcome.failure}>")
        return None

    def _log_lookahead(self, episode: Episode, index: int, look: LookAhead) -> None:
        shown = " | ".join(
            f"{c.action} -> {'unscored' if c.score is None else c.score} ({len(c.pages)} imagined)"
            for c in look.candidates
        )
        chosen = "none" if look.chosen is None else look.candidates[look.chosen].action
        log.info("%s step %d look-ahead: %s; runs %s", episode.spec.task_name, index, shown, chosen)
        if episode.wmla is not None:
            episode.wmla.append({"step": index, **look.to_dict(pages=False)})
        if self.lookahead_log is not None:
            spec = episode.spec
            where = {"task": spec.task_name, "seed": spec.seed, "attempt": spec.attempt}
            self.lookahead_log.append({**where, "step": index, **look.to_dict(pages=True)})

    def _record(
        self,
        spec: EpisodeSpec,
        objective: str,
        index: int,
        observation: Observation,
        decision: Decision,
        history: tuple[Step, ...],
        result: StepResult,
    ) -> None:
        if self.transitions is None:
            return
        transition = Transition(
            observation=observation.text,
            action=decision.action,
            next_observation=result.observation.text,
            history=tuple(step.action for step in history),
            task_id=spec.task_name,
            imagined=False,
            source="evaluate",
        )
        self.transitions.append(
            {
                **transition.to_row(),
                "seed": spec.seed,
                "attempt": spec.attempt,
                "step": index,
                "objective": objective,
                "allowed_sites": list(spec.allowed_sites),
                "action_set": action_names(spec.actions),
                "thought": decision.thought,
                "url": observation.url,
                "next_url": result.observation.url,
                "reward": result.reward,
                "done": result.done,
                "last_action_error": result.observation.last_action_error,
            }
        )

    async def _score(
        self, env: WebEnv, spec: EpisodeSpec, episode: Episode, result: StepResult | None
    ) -> None:
        """MiniWoB: the task's reward at the end; WebArena: the evaluators of its spec."""
        if spec.task is None or not spec.task.eval:
            episode.success = result is not None and result.reward > 0
            return
        evaluation = await evaluate_task(
            spec.task,
            answer=episode.answer,
            url=episode.final_url,
            page=env,
            judge=self.judge,
        )
        episode.evaluation = evaluation.to_dict()
        score = evaluation.score
        episode.success = None if score is None else score >= 1.0
