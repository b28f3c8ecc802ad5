"""Typed role inputs in, chat messages out: the only place prompt text is assembled.

Search, training-data builders and evaluation all build prompts through these functions, so
the prompt a policy is trained on is byte-for-byte the one it is asked at search time and at
evaluation. The reference wrote its training inputs with another observation summariser,
another step numbering and no few-shot turns (audit D6); here there is one history formatter,
:func:`format_history`, and one message builder per role.

The wording lives in Jinja templates under ``websynthesis/prompts/`` (``<family>_system`` and
``<family>_user`` per role, rendered with ``StrictUndefined`` so a missing variable fails
loudly); a template family is chosen per role by ``RoleConfig.template``. The policy family may
have ``<family>_examples.json``: few-shot examples, rendered through the same user template
and :func:`~websynthesis.web.actions.format_response`, as real user/assistant turns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jinja2

from websynthesis.backends.types import Message
from websynthesis.roles.parsing import DEFAULT_SCALE, ScoreScale, format_number
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, action_names
from websynthesis.web.actions import (
    ANSWER_PHRASE,
    ELEMENT_KINDS,
    Action,
    format_response,
    parse_action,
)
from websynthesis.web.observation import AXTree, parse_axtree

PACKAGE, FOLDER = "websynthesis", "prompts"


# --- how observations are fitted into prompts --------------------------------------------


@dataclass(frozen=True)
class PromptStyle:
    """Character budgets that keep prompts inside the context window.

    ``observation_chars`` bounds each full page shown (the current one, predicted ones);
    ``step_chars`` bounds the page excerpt of each history step; ``observed_steps`` keeps the
    excerpts of only the latest steps (WebEvolver shows none but the current page), ``None``
    keeps all. Reasons and actions of every step are always shown. ``few_shot`` shows the
    family's worked examples as earlier turns: a large instructed model needs them, a small
    model trained on the format does not, and they are most of a short page's prompt.
    ``manual`` keeps the world model's format manual (tree and changes formats, actions,
    rules) in its system prompt, for the same reason: without it the system prompt is one
    sentence, and a short page's training example is about a quarter as long.
    ``thoughts`` shows each history step's reasoning; a reward model or judge meant to score
    what the pages and actions show, not the policy's prose (whose style differs from one
    policy to the next: a random click's fixed sentence, an untrained model's noise), is
    given ``False``.
    """

    observation_chars: int | None = 16_000
    step_chars: int = 1_200
    observed_steps: int | None = None
    few_shot: bool = True
    manual: bool = True
    thoughts: bool = True


DEFAULT_STYLE = PromptStyle()


@dataclass(frozen=True)
class Step:
    """One earlier step: the page it was taken on, the reasoning and the action."""

    observation: AXTree
    thought: str
    action: Action

    def to_dict(self) -> dict[str, str]:
        """Plain JSON for trajectory files; :meth:`from_dict` gives back an equal prompt."""
        return {
            "observation": self.observation.render(),
            "thought": self.thought,
            "action": self.action.to_string(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Step:
        return cls(parse_axtree(data["observation"]), data["thought"], parse_action(data["action"]))


# Search asks about the same pages again and again (every child's prompt repeats its
# ancestors' steps; siblings share a page), so the two views are memoised per tree object
# (trees are immutable; identity is their hash). The bound keeps a few MB of trees alive.
@lru_cache(maxsize=2048)
def format_observation(tree: AXTree, max_chars: int | None) -> str:
    """A page as shown in a prompt: cut from the end to ``max_chars`` (with a marker)."""
    return (tree if max_chars is None else tree.truncate(max_chars=max_chars)).render()


@lru_cache(maxsize=2048)
def step_excerpt(step: Step, max_chars: int) -> str:
    """What a history step shows of its page: the acted-on element's neighbourhood.

    Actions without an element (scroll, goto, stop...) or whose element is not on the page
    show the top of the page instead, within the same budget.
    """
    tree, target = step.observation, step.action.target
    if step.action.kind in ELEMENT_KINDS and target is not None and tree.get(target) is not None:
        tree = tree.highlight(target)
    return tree.truncate(max_chars=max_chars).render()


def format_history(steps: Sequence[Step], style: PromptStyle) -> str:
    """The TRAJECTORY block: ``<step-k>`` sections, 1-based, page excerpts for the latest."""
    first_observed = 0
    if style.observed_steps is not None:
        first_observed = max(0, len(steps) - style.observed_steps)
    shown = [
        {
            "index": index,
            "observation": step_excerpt(step, style.step_chars) if index > first_observed else None,
            "thought": step.thought if style.thoughts else None,
            "action": step.action.to_string(),
        }
        for index, step in enumerate(steps, start=1)
    ]
    return render("history", steps=shown)


# --- role inputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInput:
    """The policy's question: which action next on ``observation``?

    ``actions`` is the environment's declared action set: the only verbs the prompt lists,
    the grammar offers and the parser accepts.
    """

    objective: str
    observation: AXTree
    history: tuple[Step, ...] = ()
    allowed_sites: tuple[str, ...] = ()
    actions: ActionSet = WEBARENA_ACTIONS


@dataclass(frozen=True)
class WorldModelInput:
    """The world model's question: the page after ``action`` on ``observation``.

    It gets the parsed action only, never the policy's reasoning: the reference passed the
    whole response and skipped the model whenever the reasoning mentioned "stop" (B1).
    """

    observation: AXTree
    action: Action
    history: tuple[Action, ...] = ()


@dataclass(frozen=True)
class RewardInput:
    """The reward model's question: how good is this (partial) trajectory?

    ``history`` ends with the step just taken; ``observation`` is the page it led to.
    """

    objective: str
    history: tuple[Step, ...]
    observation: AXTree


@dataclass(frozen=True)
class JudgeInput:
    """The judge's question, as outcome judge or as look-ahead critic.

    Outcome: ``answer`` is the final answer (``""`` for a bare ``stop``). Look-ahead (WMLA):
    ``observation`` is the current page, ``action`` the candidate and ``future`` the pages a
    world model predicts it leads to.
    """

    objective: str
    history: tuple[Step, ...] = ()
    observation: AXTree | None = None
    action: Action | None = None
    future: tuple[AXTree, ...] = ()
    answer: str | None = None


@dataclass(frozen=True)
class ReflectionInput:
    """Why does ``failed_action`` (taken on ``parent_observation``) not help?"""

    objective: str
    failed_action: Action
    parent_observation: AXTree
    child_observation: AXTree
    history: tuple[Step, ...] = ()


# --- message builders ------------------------------------------------------------------


def policy_messages(
    inp: PolicyInput, family: str = "policy", style: PromptStyle = DEFAULT_STYLE
) -> tuple[Message, ...]:
    """System prompt (the declared actions only), the family's few-shot turns whose action is
    declared, then the question."""
    system = _policy_system(family, inp.actions)
    question = _policy_user(family, inp, style)
    turns = _few_shot(family, style, inp.actions)
    examples = (dict(turn) for turn in turns)  # copies of the cached turns
    return (_message("system", system), *examples, _message("user", question))


def world_model_messages(
    inp: WorldModelInput, family: str = "world_model", style: PromptStyle = DEFAULT_STYLE
) -> tuple[Message, ...]:
    user = render(
        f"{family}_user",
        actions=[action.to_string() for action in inp.history],
        observation=format_observation(inp.observation, style.observation_chars),
        action=inp.action.to_string(),
    )
    return _pair(render(f"{family}_system", manual=style.manual), user)


def reward_messages(
    inp: RewardInput,
    family: str = "reward",
    style: PromptStyle = DEFAULT_STYLE,
    scale: ScoreScale = DEFAULT_SCALE,
) -> tuple[Message, ...]:
    system = render(
        f"{family}_system",
        low=format_number(scale.low),
        high=format_number(scale.high),
        levels=[format_number(level) for level in scale.levels()],
    )
    user = render(
        f"{family}_user",
        objective=inp.objective,
        trajectory=format_history(inp.history, style),
        observation=format_observation(inp.observation, style.observation_chars),
    )
    return _pair(system, user)


def judge_messages(
    inp: JudgeInput, family: str = "judge", style: PromptStyle = DEFAULT_STYLE
) -> tuple[Message, ...]:
    budget = style.observation_chars
    page = inp.observation
    user = render(
        f"{family}_user",
        objective=inp.objective,
        trajectory=format_history(inp.history, style),
        observation=None if page is None else format_observation(page, budget),
        action=None if inp.action is None else inp.action.to_string(),
        future=[format_observation(page, budget) for page in inp.future],
        answer=inp.answer,
    )
    return _pair(render(f"{family}_system"), user)


def reflection_messages(
    inp: ReflectionInput, family: str = "reflection", style: PromptStyle = DEFAULT_STYLE
) -> tuple[Message, ...]:
    budget = style.observation_chars
    user = render(
        f"{family}_user",
        objective=inp.objective,
        trajectory=format_history(inp.history, style),
        parent_observation=format_observation(inp.parent_observation, budget),
        failed_action=inp.failed_action.to_string(),
        child_observation=format_observation(inp.child_observation, budget),
    )
    return _pair(render(f"{family}_system", answer_phrase=ANSWER_PHRASE), user)


# --- templates -------------------------------------------------------------------------


def render(name: str, **variables: Any) -> str:
    """Render ``websynthesis/prompts/<name>.jinja``; trailing newlines are dropped."""
    return _environment().get_template(f"{name}.jinja").render(**variables).rstrip("\n")


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, FOLDER),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,  # templates are package data: no stat() of each file per render
    )


@cache
def _examples(family: str) -> tuple[dict[str, Any], ...]:
    """The family's few-shot examples (none if it has no examples file)."""
    path = resources.files(PACKAGE).joinpath(FOLDER, f"{family}_examples.json")
    if not path.is_file():
        return ()
    return tuple(json.loads(path.read_text(encoding="utf-8")))


@cache
def _policy_system(family: str, actions: ActionSet) -> str:
    return render(f"{family}_system", answer_phrase=ANSWER_PHRASE, actions=action_names(actions))


@cache
def _few_shot(family: str, style: PromptStyle, actions: ActionSet) -> tuple[Message, ...]:
    """The few-shot turns (the same for every request of a family, style and action set):
    an example whose action the environment does not declare would teach an action the
    policy cannot take, so it is left out."""
    turns: list[Message] = []
    for example in _examples(family) if style.few_shot else ():
        action = parse_action(example["action"])
        if action.kind not in actions:
            continue
        shown = PolicyInput(
            objective=example["objective"],
            observation=parse_axtree("\n".join(example["observation"])),
            allowed_sites=tuple(example["sites"]),
            actions=actions,
        )
        answer = format_response(example["thought"], action)
        question = _policy_user(family, shown, style)
        turns += [_message("user", question), _message("assistant", answer)]
    return tuple(turns)


def _policy_user(family: str, inp: PolicyInput, style: PromptStyle) -> str:
    return render(
        f"{family}_user",
        objective=inp.objective,
        sites=list(inp.allowed_sites),
        trajectory=format_history(inp.history, style),
        observation=format_observation(inp.observation, style.observation_chars),
    )


def _message(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _pair(system: str, user: str) -> tuple[Message, ...]:
    return (_message("system", system), _message("user", user))
