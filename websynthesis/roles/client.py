"""The five model roles, and the client that asks them in batches.

A :class:`Role` turns a typed input (:mod:`websynthesis.roles.prompts`) into a
:class:`~websynthesis.backends.types.GenerationRequest`, with a decoding grammar when the role
is constrained, and reads the answer back with its parser (:mod:`websynthesis.roles.parsing`).
A :class:`ModelClient` owns a backend and the roles of one model config; search, training-data
builders and evaluation talk to models only through it.

``await client.sample(role, inputs)`` sends one request per input as a single ``agenerate``
call, parses every sample, then re-asks only the samples that failed to parse, up to the role's
``max_retries`` times, again as one call per round. It never raises for model output or a
failed request: those come back as :class:`~websynthesis.roles.parsing.Parsed` failures with
the raw text, and are counted per role and kind in :attr:`ModelClient.stats`.

Seeds: a sampled request (``temperature > 0``) without an explicit seed gets one derived from
the model seed, the role and the prompt, so a rerun asks the same questions with the same seeds
(and a response cache replays them). A retry draws the next samples of the same seeded stream
(:func:`~websynthesis.backends.types.derive_seed`), never a repeat of the failed ones. Greedy
roles are not re-asked: the same prompt would get the same answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from websynthesis.backends.types import (
    SEED_MODULUS,
    Backend,
    Generation,
    GenerationRequest,
    Message,
    Sampling,
    derive_seed,
)
from websynthesis.backends.usage import UsageTracker
from websynthesis.counters import Counters
from websynthesis.roles.grammar import (
    a11y_grammar,
    action_grammar,
    delta_grammar,
    go_back_grammar,
    judge_grammar,
    score_grammar,
)
from websynthesis.roles.parsing import (
    DEFAULT_SCALE,
    Failure,
    Parsed,
    ScoreScale,
    allowed_hosts,
    parse_judge,
    parse_policy,
    parse_reflection,
    parse_reward,
    parse_world_model,
    parse_world_model_delta,
)
from websynthesis.roles.prompts import (
    DEFAULT_STYLE,
    JudgeInput,
    PolicyInput,
    PromptStyle,
    ReflectionInput,
    RewardInput,
    WorldModelInput,
    judge_messages,
    policy_messages,
    reflection_messages,
    reward_messages,
    world_model_messages,
)
from websynthesis.web.actions import (
    ANSWER_PHRASE,
    SELECTABLE_ROLES,
    TYPEABLE_ROLES,
    listed_options,
)

log = logging.getLogger(__name__)

# Bytes of a policy answer besides the phrase, the longest id and the free text (fences,
# "goto [https://", brackets, end-of-turn and the grammar's UTF-8 slack; see grammar.py).
_ANSWER_OVERHEAD = 30
_MAX_TEXT_CHARS = 200


@dataclass(frozen=True)
class RoleSettings:
    """How one role asks its model (``RoleConfig`` plus the prompt budgets and score scale).

    ``adapter`` is the name a request is sent under (a LoRA adapter or served model name);
    ``None`` asks the base model.
    """

    template: str
    adapter: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    constrained: bool = False
    max_retries: int = 1
    style: PromptStyle = DEFAULT_STYLE
    scale: ScoreScale = DEFAULT_SCALE

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], adapters: Mapping[str, Any]) -> RoleSettings:
        """Read a ``RoleConfig`` node; fields it lacks keep their defaults.

        The config's ``adapter`` may be an adapter's path (``${model.adapters.policy}``): it
        is sent under that adapter's name in ``model.adapters``, which is what backends load.
        """
        adapter = cfg.get("adapter") or None
        if adapter is not None:
            adapter = next((name for name, path in adapters.items() if path == adapter), adapter)
        style = PromptStyle(
            **{f.name: cfg[f.name] for f in fields(PromptStyle) if cfg.get(f.name) is not None}
        )
        scale = ScoreScale(float(cfg.get("score_low", 1)), float(cfg.get("score_high", 5)))
        known = {f.name for f in fields(cls)} - {"adapter", "style", "scale"}
        return cls(
            adapter=adapter,
            style=style,
            scale=scale,
            **{name: cfg[name] for name in known if cfg.get(name) is not None},
        )


@dataclass(frozen=True)
class _Kind:
    """What makes a role what it is: its input type, prompt, grammar and parser."""

    input_type: type
    messages: Callable[[Any, RoleSettings], tuple[Message, ...]]
    parse: Callable[[str, Any, RoleSettings], Parsed[Any]]
    grammar: Callable[[Any, RoleSettings], str]


def _policy_grammar(inp: PolicyInput, s: RoleSettings) -> str:
    """Ids of the page as shown (truncated), free text sized to finish within the budget."""
    shown, budget = inp.observation, s.style.observation_chars
    if budget is not None:
        shown = shown.truncate(max_chars=budget)
    ids = [node.id for node in shown.nodes if node.id is not None]
    typeable = [
        n.id for n in shown.nodes if n.id is not None and n.role.casefold() in TYPEABLE_ROLES
    ]
    options = {
        n.id: listed_options(n)
        for n in shown.nodes
        if n.id is not None and n.role.casefold() in SELECTABLE_ROLES
    }
    sites = [site.rstrip("/") for site in inp.allowed_sites if allowed_hosts([site])]
    longest_id = max((len(i.encode()) for i in ids), default=0)
    room = s.max_new_tokens - len(ANSWER_PHRASE) - _ANSWER_OVERHEAD - longest_id
    return action_grammar(
        ids,
        max_text_chars=max(1, min(_MAX_TEXT_CHARS, room)),
        typeable_ids=typeable,
        goto_prefixes=sites or None,
        kinds=inp.actions,
        options=options,
    )


def _integer_scale(scale: ScoreScale) -> tuple[int, int]:
    """The scale's bounds as integers: what the reward grammar can enforce."""
    if not (scale.low.is_integer() and scale.high.is_integer()):
        raise ValueError(f"a constrained reward needs an integer scale, not {scale}")
    return int(scale.low), int(scale.high)


# World-model template families that answer with what changed (a ``<changes>`` block applied
# to the current page, see websynthesis/web/tree_delta.py) instead of the whole next page.
# The family picks prompt, grammar and parser together, so one override switches a run:
# ``model.roles.world_model.template=world_model_delta``. The whole page (WebSynthesis'
# setting) stays the default.
DELTA_FAMILIES = frozenset({"world_model_delta"})


def answers_with_changes(settings: RoleSettings) -> bool:
    """Whether a world-model role with these settings answers with a change."""
    return settings.template in DELTA_FAMILIES


def _world_model_parse(text: str, inp: WorldModelInput, s: RoleSettings) -> Parsed[Any]:
    if answers_with_changes(s):
        return parse_world_model_delta(text, inp.observation)
    return parse_world_model(text)


def _world_model_grammar(inp: WorldModelInput, s: RoleSettings) -> str:
    """The page's ids (all of them: a change may name an element the prompt cut off)."""
    page = inp.observation
    ids = [node.id for node in page.nodes if node.id is not None]
    if not answers_with_changes(s):
        return a11y_grammar(ids)
    roots = page.roots
    # "" names no element: a root without an id cannot be named, so nothing is protected.
    return delta_grammar(ids, root=(roots[0].id or "") if roots else "")


KINDS: dict[str, _Kind] = {
    "policy": _Kind(
        PolicyInput,
        lambda inp, s: policy_messages(inp, s.template, s.style),
        lambda text, inp, s: parse_policy(
            text, inp.observation, allowed_hosts(inp.allowed_sites), inp.actions
        ),
        _policy_grammar,
    ),
    "world_model": _Kind(
        WorldModelInput,
        lambda inp, s: world_model_messages(inp, s.template, s.style),
        _world_model_parse,
        _world_model_grammar,
    ),
    "reward": _Kind(
        RewardInput,
        lambda inp, s: reward_messages(inp, s.template, s.style, s.scale),
        lambda text, inp, s: parse_reward(text, s.scale),
        lambda inp, s: score_grammar(*_integer_scale(s.scale)),
    ),
    "judge": _Kind(
        JudgeInput,
        lambda inp, s: judge_messages(inp, s.template, s.style),
        lambda text, inp, s: parse_judge(text),
        lambda inp, s: judge_grammar(),
    ),
    "reflection": _Kind(
        ReflectionInput,
        lambda inp, s: reflection_messages(inp, s.template, s.style),
        lambda text, inp, s: parse_reflection(text),
        lambda inp, s: go_back_grammar(),
    ),
}


class Role:
    """One role of one model: typed input -> request, answer text -> :class:`Parsed`."""

    def __init__(self, name: str, settings: RoleSettings) -> None:
        if name not in KINDS:
            raise ValueError(f"unknown role {name!r}; roles are {sorted(KINDS)}")
        self.name, self.settings, self._kind = name, settings, KINDS[name]
        if settings.constrained and name == "reward":
            _integer_scale(settings.scale)  # fail now, not at the first request

    def __repr__(self) -> str:
        return f"Role({self.name!r}, {self.settings})"

    def messages(self, inp: Any) -> tuple[Message, ...]:
        """The prompt for ``inp``: what training records must use to match inference."""
        self._check(inp)
        return self._kind.messages(inp, self.settings)

    def grammar(self, inp: Any) -> str | None:
        """The decoding grammar for ``inp``, or ``None`` when the role is unconstrained."""
        if not self.settings.constrained:
            return None
        return self._kind.grammar(inp, self.settings)

    def request(
        self, inp: Any, *, n: int | None = None, seed: int | None = None
    ) -> GenerationRequest:
        """The request for ``inp``: ``n`` samples (default: the role's), ``seed`` as given."""
        s = self.settings
        return GenerationRequest(
            messages=self.messages(inp),
            sampling=Sampling(s.temperature, s.top_p, s.max_new_tokens, n or s.n, seed),
            model=s.adapter,
            grammar=self.grammar(inp),
            role=self.name,
        )

    def parse(self, text: str, inp: Any) -> Parsed[Any]:
        """Read one answer to ``inp``; a parser bug becomes a counted ``parser_error``."""
        try:
            return self._kind.parse(text, inp, self.settings)
        except Exception as error:
            log.exception("the %s parser failed on a %d-char answer", self.name, len(text))
            return Parsed(text, failure=Failure.PARSER_ERROR, detail=repr(error))

    def _check(self, inp: Any) -> None:
        if not isinstance(inp, self._kind.input_type):
            expected = self._kind.input_type.__name__
            raise TypeError(f"role {self.name!r} takes {expected}, got {type(inp).__name__}")


# --- outcome counters ------------------------------------------------------------------

OK = "ok"


@dataclass
class RoleOutcomes(Counters):
    """What one role's answers came to.

    ``attempts`` counts every parsed sample by outcome (``ok`` or a failure kind), retries
    included; ``final`` counts what callers got back, one per sample asked for; ``reasons``
    refines failed attempts as ``kind/reason``.
    """

    requests: int = 0
    samples: int = 0
    retried: int = 0
    truncated: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    final: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class OutcomeStats:
    """Per-role :class:`RoleOutcomes`, serialisable into ``stats.json`` and mergeable."""

    roles: dict[str, RoleOutcomes] = field(default_factory=dict)

    def role(self, name: str) -> RoleOutcomes:
        return self.roles.setdefault(name, RoleOutcomes())

    def to_dict(self) -> dict[str, Any]:
        return {name: outcomes.to_dict() for name, outcomes in sorted(self.roles.items())}

    def failed_roles(self) -> dict[str, dict[str, int]]:
        """Roles asked at least once whose every attempt failed in the backend (a server
        unreachable, a request refused), with those failures counted by kind."""
        failed = {}
        for name, outcomes in sorted(self.roles.items()):
            tried = sum(outcomes.attempts.values())
            if tried and outcomes.attempts[Failure.BACKEND_ERROR] == tried:
                prefix = f"{Failure.BACKEND_ERROR}/"
                failed[name] = {
                    reason.removeprefix(prefix) or "unknown": count
                    for reason, count in sorted(outcomes.reasons.items())
                    if reason.startswith(prefix)
                } or {"unknown": tried}
        return failed

    def require_answers(self) -> None:
        """Raise :class:`RolesFailed` when a role's every call failed: a run whose policy or
        world model never answered made nothing, however long it ran."""
        failed = self.failed_roles()
        if failed:
            raise RolesFailed(failed)

    def merge(self, other: OutcomeStats | Mapping[str, Any]) -> None:
        data = other.to_dict() if isinstance(other, OutcomeStats) else other
        for name, outcomes in data.items():
            self.role(name).add(outcomes)


class RolesFailed(RuntimeError):
    """Every call of these roles failed in their backends; ``failed`` counts why."""

    def __init__(self, failed: Mapping[str, Mapping[str, int]]) -> None:
        self.failed = {role: dict(kinds) for role, kinds in failed.items()}
        parts = []
        for role, kinds in self.failed.items():
            counts = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
            parts.append(f"{role} ({sum(kinds.values())} calls: {counts})")
        super().__init__(
            f"every call of {'; '.join(parts)} failed in its backend: check model.backend "
            "and model.role_backends (the server's address, key and what it serves)"
        )


# --- the client ------------------------------------------------------------------------


class ModelClient:
    """A backend and the roles of one model config, asked in batches."""

    def __init__(
        self,
        backend: Backend,
        roles: Mapping[str, Role],
        *,
        seed: int = 0,
        usage: UsageTracker | None = None,
        model_name: str = "base",
    ) -> None:
        self.backend = backend
        self.roles = dict(roles)
        self.seed = seed
        self.usage = usage
        self.model_name = model_name
        self.stats = OutcomeStats()

    @classmethod
    def from_config(
        cls, cfg: Any, *, backend: Backend | None = None, usage: UsageTracker | None = None
    ) -> ModelClient:
        """Build from a model config (``cfg.model``); the backend (and the role backends,
        :mod:`websynthesis.backends.routing`) is instantiated unless given."""
        if backend is None:
            from websynthesis.backends.routing import routed_backend

            backend = routed_backend(cfg)
        adapters = dict(cfg.get("adapters") or {})
        roles = {
            name: Role(name, RoleSettings.from_config(role_cfg, adapters))
            for name, role_cfg in cfg.roles.items()
        }
        return cls(backend, roles, seed=int(cfg.get("seed") or 0), usage=usage, model_name=cfg.name)

    def role(self, name: str) -> Role:
        try:
            return self.roles[name]
        except KeyError:
            raise KeyError(f"no role {name!r}; configured: {sorted(self.roles)}") from None

    async def run(
        self, role: str, inputs: Sequence[Any], *, seeds: Sequence[int | None] | None = None
    ) -> list[Parsed[Any]]:
        """One outcome per input (one sample each, whatever the role's ``n``)."""
        return [first for first, *_ in await self.sample(role, inputs, n=1, seeds=seeds)]

    async def sample(
        self,
        role: str,
        inputs: Sequence[Any],
        *,
        n: int | None = None,
        seeds: Sequence[int | None] | None = None,
    ) -> list[list[Parsed[Any]]]:
        """``n`` outcomes per input (default: the role's ``n``), failures re-asked.

        ``seeds`` gives each input's seed explicitly (``None``: unseeded, fresh samples).
        """
        the_role = self.role(role)
        settings = the_role.settings
        n = n or settings.n
        if seeds is not None and len(seeds) != len(inputs):
            raise ValueError(f"{len(seeds)} seeds for {len(inputs)} inputs")
        base = [the_role.request(inp, n=n) for inp in inputs]
        sampled = settings.temperature > 0
        if seeds is None:
            seeds = [self.seed_for(role, request) if sampled else None for request in base]
        stats = self.stats.role(role)
        results: list[list[Parsed[Any] | None]] = [[None] * n for _ in inputs]
        drawn = [0] * len(inputs)  # samples drawn so far from each input's seeded stream
        pending = [(i, list(range(n))) for i in range(len(inputs))]
        for attempt in range(1, settings.max_retries + 2):
            requests = [
                _resampled(base[i], n=len(slots), seed=derive_seed(seeds[i], drawn[i]))
                for i, slots in pending
            ]
            generations = await self.generate(requests)
            stats.requests += len(requests)
            failed = []
            for (i, slots), generation in zip(pending, generations, strict=True):
                drawn[i] += len(slots)
                for k, slot in enumerate(slots):
                    outcome = self._outcome(the_role, inputs[i], generation, k, attempt)
                    _count_attempt(stats, outcome)
                    results[i][slot] = outcome
                again = [slot for slot in slots if _retryable(results[i][slot])]
                if again:
                    failed.append((i, again))
            if not (failed and sampled and attempt <= settings.max_retries):
                break
            stats.retried += sum(len(slots) for _, slots in failed)
            pending = failed
        final = [[outcome for outcome in row if outcome is not None] for row in results]
        for row in final:
            stats.final.update(outcome.failure or OK for outcome in row)
        return final

    def close(self) -> None:
        self.backend.close()

    async def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """One raw batch call, for free-text requests too.

        A backend that raises fails every request rather than the caller; usage is recorded.
        """
        try:
            generations = await self.backend.agenerate(requests)
            if len(generations) != len(requests):
                raise RuntimeError(f"{len(generations)} answers to {len(requests)} requests")
        except Exception as error:
            log.exception("backend failed a batch of %d requests", len(requests))
            generations = [Generation(texts=[], error=f"internal: {error!r}") for _ in requests]
        if self.usage is not None:
            self.usage.record_batch(requests, generations, default_model=self.model_name)
        return generations

    def _outcome(
        self, role: Role, inp: Any, generation: Generation, k: int, attempt: int
    ) -> Parsed[Any]:
        if generation.error is not None or k >= len(generation.texts):
            error = generation.error or f"the backend returned {len(generation.texts)} samples"
            kind = error.split(":", 1)[0] if ":" in error else ""
            outcome = Parsed("", failure=Failure.BACKEND_ERROR, reason=kind, detail=error)
        else:
            outcome = role.parse(generation.texts[k], inp)
        reasons = generation.finish_reasons
        truncated = k < len(reasons) and reasons[k] == "length"
        return replace(outcome, attempts=attempt, truncated=truncated)

    def seed_for(self, role: str, request: GenerationRequest) -> int:
        """A seed from the model seed, the role and the prompt: same question, same seed."""
        key = json.dumps([self.seed, role, request.messages, request.grammar], sort_keys=True)
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % SEED_MODULUS


def _resampled(request: GenerationRequest, *, n: int, seed: int | None) -> GenerationRequest:
    return replace(request, sampling=replace(request.sampling, n=n, seed=seed))


def _plain(value: Any) -> Any:
    return dict(sorted(value.items())) if isinstance(value, Counter) else value


def _retryable(outcome: Parsed[Any] | None) -> bool:
    """Bad output is re-asked; a backend error is not (the backend already retried it)."""
    return outcome is not None and outcome.failure not in (None, Failure.BACKEND_ERROR)


def _count_attempt(stats: RoleOutcomes, outcome: Parsed[Any]) -> None:
    stats.samples += 1
    stats.truncated += outcome.truncated
    stats.attempts[outcome.failure or OK] += 1
    if outcome.failure is not None and outcome.reason:
        stats.reasons[f"{outcome.failure}/{outcome.reason}"] += 1
