"""The agent loop and WMLA with a scripted backend and a scripted env (exact control), then a
real MiniWoB++ episode with the tiny model and WMLA on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.data.records import JsonlLog, read_records
from websynthesis.data.tasks import task_from_config
from websynthesis.data.transitions import read_transitions
from websynthesis.env.base import EnvError, Observation, StepResult
from websynthesis.evaluation.agent import Agent, AgentSettings, Episode, EpisodeSpec
from websynthesis.evaluation.wmla import (
    Candidate,
    LookAheadPlanner,
    LookAheadSettings,
    choose,
)
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.web.actions import ANSWER_PHRASE, Action, ActionKind, parse_action
from websynthesis.web.observation import parse_axtree

FORM = (
    "Tab 0 (current): Form\n\n"
    "[1] RootWebArea 'Form' focused: True\n"
    "\t[3] button 'Submit'\n"
    "\t[4] button 'Cancel'\n"
    "\t[5] textbox 'Name' required: False"
)
DONE = "Tab 0 (current): Done\n\n[1] RootWebArea 'Done' focused: True\n\t[6] heading 'Thanks'"
CANCELLED = "Tab 0 (current): Cancelled\n\n[1] RootWebArea 'Cancelled' focused: True"


def answer(action: str) -> str:
    return f"Let's think step-by-step. Reasoning. {ANSWER_PHRASE} ```{action}```"


@dataclass
class Script:
    """Answers by role: ``policy(prompt, request)``, ``world_model(prompt)``, ``judge(prompt)``."""

    policy: Callable[[str, GenerationRequest], str]
    world_model: Callable[[str], str] = lambda prompt: f"<a11y>\n{DONE}\n</a11y>"
    judge: Callable[[str], str] = lambda prompt: "Reason: ok\nScore: 0.5"
    requests: list[GenerationRequest] = field(default_factory=list)

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.requests += requests
        answers = []
        for request in requests:
            prompt = request.messages[-1]["content"]
            if request.role == "policy":
                text = self.policy(prompt, request)
            else:
                text = getattr(self, request.role)(prompt)
            answers.append(Generation(texts=[text] * request.sampling.n))
        return answers

    def close(self) -> None:
        pass

    def asked(self, role: str) -> list[str]:
        return [r.messages[-1]["content"] for r in self.requests if r.role == role]


def client_for(script: Script, policy_temperature: float = 1.0) -> ModelClient:
    roles = {
        "policy": Role("policy", RoleSettings("policy", temperature=policy_temperature)),
        "world_model": Role("world_model", RoleSettings("world_model", max_retries=0)),
        "judge": Role("judge", RoleSettings("judge")),
    }
    return ModelClient(script, roles)


class FormEnv:
    """Submit ends the episode with reward 1; Cancel leads to a dead end; ``crash_at`` fails."""

    def __init__(self, crash_at: int | None = None, reset_fails: bool = False) -> None:
        self.crash_at, self.reset_fails, self.steps, self.closed = crash_at, reset_fails, 0, False

    def _obs(self, text: str, error: str | None = None) -> Observation:
        url = "file:///form"
        return Observation(parse_axtree(text), text, url, "Submit the form", (url,), error)

    def reset(self, task: str, seed: int) -> Observation:
        if self.reset_fails:
            raise EnvError("no browser")
        self.steps, self.page = 0, FORM
        return self._obs(FORM)

    def step(self, action: Action) -> StepResult:
        self.steps += 1
        if self.steps == self.crash_at:
            return StepResult(self._obs(self.page), 0.0, True, error="environment failure: died")
        if action.kind is ActionKind.STOP:
            return StepResult(self._obs(self.page), 0.0, True)
        if action.target == "3":
            return StepResult(self._obs(DONE), 1.0, True)
        if action.target == "4":
            self.page = CANCELLED
            return StepResult(self._obs(CANCELLED), 0.0, False)
        return StepResult(self._obs(self.page, "nothing happened"), 0.0, False)

    def read_page(self, url: str | None = None, script: str | None = None) -> str:
        return ""

    def close(self) -> None:
        self.closed = True


def run(agent: Agent, env: FormEnv, attempt: int = 0) -> Episode:
    return asyncio.run(agent.run(env, EpisodeSpec("form", 1000, attempt)))


# --- the plain agent loop ---------------------------------------------------------------


def test_episode_success_transitions_and_training_prompt(tmp_path: Path) -> None:
    actions = iter(["type [5] [Ada] [0]", "click [3]"])
    script = Script(policy=lambda prompt, request: answer(next(actions)))
    log = JsonlLog(tmp_path / "transitions.jsonl")
    agent = Agent(client_for(script), AgentSettings(max_steps=5), transitions=log)
    episode = run(agent, FormEnv())
    record = episode.to_record()
    assert (record["success"], record["steps"], record["end"], record["error"]) == (
        True, 2, "done", None
    )  # fmt: skip
    assert record["actions"] == ["type [5] [Ada] [0]", "click [3]"]
    # The second question carries the first step in the training history format.
    second = script.asked("policy")[1]
    assert "<step-1>" in second and "type [5] [Ada] [0]" in second
    assert "OBJECTIVE:\nSubmit the form" in second
    rows = list(read_transitions(tmp_path / "transitions.jsonl"))
    assert [r.action.to_string() for r in rows] == record["actions"]
    assert rows[1].history == (parse_action("type [5] [Ada] [0]"),)
    assert rows[1].next_observation == DONE and not rows[1].imagined
    raw = list(read_records(tmp_path / "transitions.jsonl"))
    assert raw[0]["task_id"] == "form" and raw[0]["seed"] == 1000 and raw[0]["step"] == 0


def test_unusable_answers_are_counted_failure_steps() -> None:
    texts = iter(["I am not sure.", answer("click [99]"), answer("click [3]")])
    script = Script(policy=lambda prompt, request: next(texts))
    roles_retry_free = client_for(script)
    roles_retry_free.roles["policy"] = Role(
        "policy", RoleSettings("policy", temperature=1.0, max_retries=0)
    )
    episode = run(Agent(roles_retry_free, AgentSettings(max_steps=5)), FormEnv())
    assert episode.success and episode.steps == 3 and episode.error is None
    assert dict(episode.policy_failures) == {"no_action": 1, "invalid_action": 1}
    assert episode.actions == ["<no_action>", "<invalid_action>", "click [3]"]


def test_too_many_failures_in_a_row_end_the_episode() -> None:
    script = Script(policy=lambda prompt, request: "no idea")
    episode = run(Agent(client_for(script), AgentSettings(max_steps=10, max_failures=2)), FormEnv())
    assert (episode.success, episode.steps, episode.end) == (False, 2, "policy_failures")
    assert episode.error is None  # the agent's failure, not the environment's


def test_step_limit_and_different_seeds_per_attempt() -> None:
    script = Script(policy=lambda prompt, request: answer("type [5] [x] [0]"))
    agent = Agent(client_for(script), AgentSettings(max_steps=3))
    for attempt in (0, 1):
        episode = run(agent, FormEnv(), attempt=attempt)
        assert (episode.success, episode.steps, episode.end) == (False, 3, "max_steps")
    seeds = [r.sampling.seed for r in script.requests]
    assert len(set(seeds)) == 6  # a fresh seed per step and per attempt


def test_arms_on_one_draw_sample_alike_and_another_draw_samples_anew() -> None:
    def seeds(draw: int | None) -> list[int | None]:
        script = Script(policy=lambda prompt, request: answer("type [5] [x] [0]"))
        settings = AgentSettings(max_steps=3) if draw is None else AgentSettings(3, draw=draw)
        run(Agent(client_for(script), settings), FormEnv())
        return [r.sampling.seed for r in script.requests]

    assert seeds(None) == seeds(0)  # draw 0 is the stream it always was: arms stay paired
    assert not set(seeds(1)) & set(seeds(0)) and seeds(1) != seeds(2)


def test_environment_failures_are_errors_not_agent_failures(tmp_path: Path) -> None:
    script = Script(policy=lambda prompt, request: answer("type [5] [x] [0]"))
    log = JsonlLog(tmp_path / "transitions.jsonl")
    agent = Agent(client_for(script), AgentSettings(max_steps=5), transitions=log)
    crashed = run(agent, FormEnv(crash_at=2))
    assert crashed.error == "environment failure: died" and crashed.end == "env_error"
    assert crashed.success is None and crashed.steps == 2
    assert len(list(read_records(tmp_path / "transitions.jsonl"))) == 1  # the crash is no data
    no_browser = run(agent, FormEnv(reset_fails=True))
    assert no_browser.error == "reset: no browser" and no_browser.steps == 0


def test_stop_is_the_answer() -> None:
    script = Script(policy=lambda prompt, request: answer("stop [42]"))
    episode = run(Agent(client_for(script), AgentSettings()), FormEnv())
    assert (episode.answer, episode.end, episode.success) == ("42", "stop", False)


# --- WMLA -----------------------------------------------------------------------------------

DIFFER = "Please generate an action different from"


def wmla_policy(prompt: str, request: GenerationRequest) -> str:
    """Greedy: Cancel. Samples: Submit, then Cancel again (a duplicate). Dreams: stop."""
    if "<step-1>" in prompt:  # acting inside the imagination (the real episode is at step 0)
        return answer("stop []")
    if request.sampling.temperature == 0:
        return answer("click [4]")
    avoid = prompt.split(DIFFER)[-1] if DIFFER in prompt else ""
    return answer("click [4]" if "click [3]" in avoid else "click [3]")


def world_model(prompt: str) -> str:
    action = re.search(r"ACTION:\n(.+)", prompt)[1]
    return f"<a11y>\n{DONE if action == 'click [3]' else CANCELLED}\n</a11y>"


def judge(prompt: str) -> str:
    if "<page-1>\nTab 0 (current): Done" in prompt:
        return "Reason: submitted\nScore: 1"
    return "Reason: not yet\nScore: 0"


def test_every_candidate_gets_a_real_simulation_and_the_best_runs(tmp_path: Path) -> None:
    script = Script(policy=wmla_policy, world_model=world_model, judge=judge)
    client = client_for(script)
    planner = LookAheadPlanner(client, LookAheadSettings(candidates=3, depth=1))
    agent = Agent(client, AgentSettings(), planner=planner, lookahead_log=JsonlLog(tmp_path / "w"))
    episode = run(agent, FormEnv())
    assert episode.success and episode.actions == ["click [3]"]
    [step] = episode.wmla
    shown = [(c["source"], c["action"], c["score"]) for c in step["candidates"]]
    assert shown == [("greedy", "click [4]", 0.0), ("sample", "click [3]", 1.0)]
    assert step["chosen"] == 1 and not step["fallback"] and step["duplicates"] == 1
    # Regression (WebEvolver's empty-simulation bug): one world-model call per candidate,
    # and every judged non-stop candidate saw its own non-empty imagined page.
    simulated = script.asked("world_model")
    assert sorted(re.search(r"ACTION:\n(.+)", p)[1] for p in simulated) == [
        "click [3]",
        "click [4]",
    ]
    verdicts = script.asked("judge")
    assert len(verdicts) == 2 and all("SIMULATED RESULT:\n<page-1>\nTab 0" in p for p in verdicts)
    # The second sample was asked to differ from both candidates found before it.
    samples = [p for p in script.asked("policy") if DIFFER in p]
    assert "click [4]" in samples[0] and "click [4]; click [3]" in samples[1]
    [logged] = read_records(tmp_path / "w")
    assert logged["candidates"][1]["pages"] == [DONE]


def test_depth_two_lets_the_policy_act_inside_the_imagination() -> None:
    script = Script(policy=wmla_policy, world_model=world_model, judge=judge)
    client = client_for(script)
    planner = LookAheadPlanner(client, LookAheadSettings(candidates=2, depth=2))
    look = asyncio.run(planner.plan("Submit the form", parse_axtree(FORM), (), ("t", 0, 0, 0)))
    for candidate in look.candidates:
        assert candidate.imagined == ["stop []"] and candidate.ended == "imagined_stop"
        assert len(candidate.pages) == 1
    dreamt = [p for p in script.asked("policy") if "<step-1>" in p]
    assert len(dreamt) == 2  # the policy acted once inside each candidate's imagined future


def test_stop_candidates_are_judged_on_their_answer_without_simulation() -> None:
    def policy(prompt: str, request: GenerationRequest) -> str:
        return answer("stop [42]" if request.sampling.temperature == 0 else "click [3]")

    script = Script(policy=policy, world_model=world_model, judge=judge)
    planner = LookAheadPlanner(client_for(script), LookAheadSettings(candidates=2))
    look = asyncio.run(planner.plan("Answer", parse_axtree(FORM), (), "k"))
    stop, click = look.candidates
    assert stop.pages == [] and click.pages != []
    assert len(script.asked("world_model")) == 1
    stop_prompt = next(p for p in script.asked("judge") if "stop [42]" in p)
    assert "FINAL ANSWER:\n42" in stop_prompt and "SIMULATED RESULT" not in stop_prompt


def test_a_failed_simulation_is_unscored_never_judged_empty() -> None:
    script = Script(policy=wmla_policy, world_model=lambda prompt: "no page here", judge=judge)
    planner = LookAheadPlanner(client_for(script), LookAheadSettings(candidates=3))
    look = asyncio.run(planner.plan("Submit the form", parse_axtree(FORM), (), "k"))
    assert script.asked("judge") == []
    assert all(c.score is None and c.ended == "world_model:no_tree" for c in look.candidates)
    assert (look.chosen, look.fallback) == (0, True)  # the greedy candidate


def test_tie_break_prefers_the_greedy_then_proposal_order() -> None:
    def cand(score: float | None) -> Candidate:
        return Candidate("sample", "", parse_action("click [3]"), score=score)

    assert choose([cand(0.5), cand(0.5), cand(1.0)]) == (2, False)
    assert choose([cand(0.5), cand(1.0), cand(1.0)]) == (1, False)
    assert choose([cand(None), cand(0.0)]) == (1, False)  # unscored ranks below 0
    assert choose([cand(None), cand(None)]) == (0, True)
    assert choose([]) == (None, False)


def test_lookahead_config_is_checked() -> None:
    with pytest.raises(ValueError):
        LookAheadSettings(candidates=0)
    with pytest.raises(ValueError):
        LookAheadSettings(temperature=0.0)


def test_a_task_with_a_webarena_spec_is_scored_by_its_evaluators() -> None:
    spec = {
        "eval_types": ["string_match", "url_match"],
        "reference_answers": {"must_include": ["42"]},
        "reference_url": "file:///form",
    }
    task = task_from_config({"task_id": 7, "intent": "What is the answer?", "eval": spec})
    script = Script(policy=lambda prompt, request: answer("stop [It is 42]"))
    agent = Agent(client_for(script), AgentSettings())
    episode = asyncio.run(agent.run(FormEnv(), EpisodeSpec("7", 0, 0, task)))
    assert episode.success is True and episode.evaluation["score"] == 1.0
    assert "OBJECTIVE:\nWhat is the answer?" in script.asked("policy")[0]  # the task's intent
    wrong = Script(policy=lambda prompt, request: answer("stop [41]"))
    episode = asyncio.run(
        Agent(client_for(wrong), AgentSettings()).run(FormEnv(), EpisodeSpec("7", 0, 0, task))
    )
    assert episode.success is False
    fuzzy = {**spec, "reference_answers": {"fuzzy_match": ["42"]}}
    no_judge = task_from_config({"task_id": 8, "intent": "What is it?", "eval": fuzzy})
    episode = asyncio.run(agent.run(FormEnv(), EpisodeSpec("8", 0, 0, no_judge)))
    assert episode.success is None and episode.error is None  # unscored, not a failure
