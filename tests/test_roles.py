"""Roles and the batched client: requests, retries of failures only, counted typed outcomes.

Most tests drive :class:`ModelClient` with a scripted backend (exact control over answers and
errors); the last ones run every role end to end on the tiny random model (``model=tiny``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from websynthesis.backends.types import Generation, GenerationRequest, derive_seed
from websynthesis.backends.usage import UsageTracker
from websynthesis.roles import client as roles_module
from websynthesis.roles.client import ModelClient, OutcomeStats, Role, RoleSettings
from websynthesis.roles.parsing import Failure, Parsed, ScoreScale
from websynthesis.roles.prompts import (
    JudgeInput,
    PolicyInput,
    PromptStyle,
    ReflectionInput,
    RewardInput,
    Step,
    WorldModelInput,
)
from websynthesis.web.actions import ANSWER_PHRASE, ActionKind, parse_action
from websynthesis.web.observation import AXTree, parse_axtree

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

PAGES = [
    parse_axtree(
        "Tab 0 (current): Dashboard / Magento Admin\n\n"
        "[1] RootWebArea 'Dashboard / Magento Admin' focused: True\n"
        "\t[20] link 'Sales'\n"
        "\t[21] link 'Catalog'\n"
        "\t[30] searchbox 'Search by keyword' required: False\n"
        "\t[40] main ''\n"
        "\t\t[41] heading 'Bestsellers'\n"
        "\t\t[42] StaticText 'Quest Lumaflex Band'"
    ),
    parse_axtree(
        "Tab 0 (current): Projects · GitLab\n\n"
        "[1] RootWebArea 'Projects · GitLab' focused: True\n"
        "\t[7] textbox 'Search GitLab' required: False\n"
        "\t[8] link 'a11yproject.com'\n"
        "\t[9] link 'primer/design'\n"
        "\t[10] button 'New project'"
    ),
    parse_axtree(
        "Tab 0 (current): /f/books\n\n"
        "[1] RootWebArea '/f/books' focused: True\n"
        "\t[3] link 'Postmill'\n"
        "\t[4] searchbox 'Search query' required: False\n"
        "\t[5] combobox 'Sort by' hasPopup: menu expanded: False\n"
        "\t[6] link 'Submit'"
    ),
]
SITES = ("http://localhost:7780",)


def policy_input(k: int = 0, objective: str = "Show the bestsellers") -> PolicyInput:
    return PolicyInput(objective, PAGES[k % len(PAGES)], (), SITES)


def reward_input(objective: str) -> RewardInput:
    step = Step(PAGES[0], "Open the sales report.", parse_action("click [20]"))
    return RewardInput(objective, (step,), PAGES[1])


def answer(action: str) -> str:
    return f"Let's think step-by-step. It is there. {ANSWER_PHRASE} ```{action}```"


def objective_of(request: GenerationRequest) -> str:
    return request.messages[-1]["content"].split("\n")[1]


class Scripted:
    """A backend answering ``reply(request, call number, sample index)``; records each call."""

    def __init__(self, reply: Callable[[GenerationRequest, int, int], str | Generation]) -> None:
        self.reply = reply
        self.calls: list[list[GenerationRequest]] = []
        self.closed = False

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(list(requests))
        call = len(self.calls)
        out = []
        for request in requests:
            replies = [self.reply(request, call, j) for j in range(request.sampling.n)]
            if isinstance(replies[0], Generation):
                out.append(replies[0])
                continue
            n = len(replies)
            out.append(Generation(texts=replies, prompt_tokens=10, completion_tokens=5 * n,
                                  finish_reasons=["stop"] * n))  # fmt: skip
        return out

    def close(self) -> None:
        self.closed = True


def client_for(backend: object, **roles: RoleSettings) -> ModelClient:
    return ModelClient(backend, {name: Role(name, s) for name, s in roles.items()})  # type: ignore[arg-type]


SAMPLED = dict(temperature=0.7, max_retries=2)


# --- requests --------------------------------------------------------------------------


def test_one_batch_per_round_and_typed_outcomes() -> None:
    backend = Scripted(lambda request, call, j: answer("click [20]"))
    client = client_for(backend, policy=RoleSettings("policy", temperature=1.0, n=2, max_retries=0))
    inputs = [policy_input(0), policy_input(0, "Open sales"), policy_input(1)]
    outcomes = asyncio.run(client.sample("policy", inputs))
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 3
    assert [r.sampling.n for r in backend.calls[0]] == [2, 2, 2]
    assert [[o.failure for o in row] for row in outcomes] == [
        [None, None],
        [None, None],
        [Failure.INVALID_ACTION] * 2,  # [20] is not on the GitLab page
    ]
    assert outcomes[2][0].reason == "unknown_id" and outcomes[2][0].value.action.target == "20"
    assert all(o.raw == answer("click [20]") for row in outcomes for o in row)
    single = asyncio.run(client.run("policy", inputs[:2]))
    assert [o.ok for o in single] == [True, True] and backend.calls[-1][0].sampling.n == 1


def test_requests_carry_adapter_sampling_grammar_and_role() -> None:
    settings = RoleSettings("policy", "policy", 1.0, 0.95, 128, 4, True)
    request = Role("policy", settings).request(policy_input(1), seed=7)
    assert (request.model, request.role, request.sampling.n, request.sampling.seed) == (
        "policy", "policy", 4, 7,
    )  # fmt: skip
    assert request.sampling.temperature == 1.0 and request.sampling.max_new_tokens == 128
    assert '"7"' in request.grammar and '"10"' in request.grammar and '"20"' not in request.grammar
    free = Role("policy", RoleSettings("policy")).request(policy_input(1))
    assert free.grammar is None and free.model is None
    reward = Role("reward", RoleSettings("reward", constrained=True)).request(reward_input("x"))
    assert '"5"' in reward.grammar and '"6"' not in reward.grammar
    judge = Role("judge", RoleSettings("judge", constrained=True)).request(JudgeInput("x"))
    assert '"0.5"' in judge.grammar
    world = WorldModelInput(PAGES[0], parse_action("click [20]"))
    assert "</a11y>" in Role("world_model", RoleSettings("world_model", constrained=True)).grammar(
        world
    )


def test_bad_role_setups_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        Role("critic", RoleSettings("judge"))
    with pytest.raises(ValueError, match="integer scale"):
        Role("reward", RoleSettings("reward", constrained=True, scale=ScoreScale(0, 0.5)))
    client = client_for(Scripted(lambda *a: ""), reward=RoleSettings("reward"))
    with pytest.raises(TypeError, match="takes RewardInput"):
        asyncio.run(client.run("reward", [policy_input()]))
    with pytest.raises(KeyError, match="no role 'judge'"):
        asyncio.run(client.run("judge", [JudgeInput("x")]))


def test_settings_from_config_map_adapter_paths_to_names() -> None:
    adapters = {"policy": "/ckpt/policy", "world_model": None}
    cfg = {"template": "policy", "adapter": "/ckpt/policy", "temperature": 1.0, "n": 4}
    settings = RoleSettings.from_config(cfg, adapters)
    assert (settings.adapter, settings.temperature, settings.n) == ("policy", 1.0, 4)
    served = RoleSettings.from_config({"template": "p", "adapter": "served"}, adapters)
    assert served.adapter == "served"
    assert RoleSettings.from_config({"template": "p", "adapter": None}, adapters).adapter is None
    extra = {"template": "reward", "score_low": 0, "score_high": 10, "observation_chars": 900}
    read = RoleSettings.from_config(extra, {})
    assert read.scale == ScoreScale(0, 10) and read.style == PromptStyle(observation_chars=900)


# --- retries and seeds -----------------------------------------------------------------


def test_retries_reask_only_the_failed_samples_in_one_batch() -> None:
    script = {
        ("good", 1): "Reason: fine\nScore: 4",
        ("late", 1): "I cannot tell.",
        ("late", 2): "Reason: now\nScore: 3",
        ("never", 1): "Score: 9",
        ("never", 2): "Reason: hmm",
        ("never", 3): "Score: 0",
    }
    backend = Scripted(lambda request, call, j: script[(objective_of(request), call)])
    client = client_for(backend, reward=RoleSettings("reward", **SAMPLED))
    inputs = [reward_input(o) for o in ("good", "late", "never")]
    outcomes = asyncio.run(client.run("reward", inputs))
    assert [[objective_of(r) for r in call] for call in backend.calls] == [
        ["good", "late", "never"],
        ["late", "never"],
        ["never"],
    ]
    good, late, never = outcomes
    assert (good.value.score, good.attempts) == (4.0, 1)
    assert (late.value.score, late.attempts, late.raw) == (3.0, 2, "Reason: now\nScore: 3")
    assert (never.failure, never.attempts, never.raw) == (Failure.SCORE_OUT_OF_RANGE, 3, "Score: 0")
    stats = client.stats.to_dict()["reward"]
    assert stats["requests"] == 6 and stats["samples"] == 6 and stats["retried"] == 3
    assert stats["attempts"] == {"ok": 2, "no_score": 2, "score_out_of_range": 2}
    assert stats["final"] == {"ok": 2, "score_out_of_range": 1}


def test_retries_draw_new_samples_of_the_same_seeded_stream() -> None:
    backend = Scripted(lambda request, call, j: "Score: 4" if (call, j) == (1, 1) else "no")
    client = client_for(backend, reward=RoleSettings("reward", n=3, **SAMPLED))
    [row] = asyncio.run(client.sample("reward", [reward_input("x")], seeds=[11]))
    first, second, third = (call[0].sampling for call in backend.calls)
    assert (first.n, first.seed) == (3, 11)
    assert (second.n, second.seed) == (2, derive_seed(11, 3))  # the two failed samples only
    assert (third.n, third.seed) == (2, derive_seed(11, 5))
    assert [o.ok for o in row] == [False, True, False] and [o.attempts for o in row] == [3, 1, 3]


def test_seeds_come_from_the_model_seed_and_the_prompt() -> None:
    backend = Scripted(lambda *a: "Score: 4")
    settings = RoleSettings("reward", temperature=0.7)
    inputs = [reward_input(o) for o in "aab"]
    asyncio.run(client_for(backend, reward=settings).run("reward", inputs))
    seeds = [r.sampling.seed for r in backend.calls[0]]
    assert seeds[0] == seeds[1] != seeds[2] and all(isinstance(s, int) for s in seeds)
    other = ModelClient(backend, {"reward": Role("reward", settings)}, seed=1)  # type: ignore[arg-type]
    asyncio.run(other.run("reward", [reward_input("a")]))
    assert backend.calls[-1][0].sampling.seed != seeds[0]
    asyncio.run(other.run("reward", [reward_input("a")], seeds=[None]))
    assert backend.calls[-1][0].sampling.seed is None  # explicitly unseeded


def test_greedy_roles_are_not_reasked() -> None:
    backend = Scripted(lambda *a: "I am not sure.")
    client = client_for(backend, judge=RoleSettings("judge", temperature=0.0, max_retries=3))
    [outcome] = asyncio.run(client.run("judge", [JudgeInput("x", answer="y")]))
    assert outcome.failure is Failure.NO_SCORE and len(backend.calls) == 1
    assert backend.calls[0][0].sampling.seed is None


# --- nothing raises --------------------------------------------------------------------


def test_backend_errors_are_counted_outcomes_and_not_retried() -> None:
    def reply(request: GenerationRequest, call: int, j: int) -> str | Generation:
        if objective_of(request) == "long":
            return Generation(texts=[], error="context_length: 9000 prompt tokens > 4096")
        return "Reason: ok\nScore: 5"

    backend = Scripted(reply)
    client = client_for(backend, reward=RoleSettings("reward", **SAMPLED))
    long, fine = asyncio.run(client.run("reward", [reward_input("long"), reward_input("fine")]))
    assert (long.failure, long.reason, long.raw) == (Failure.BACKEND_ERROR, "context_length", "")
    assert "9000" in long.detail and fine.ok and len(backend.calls) == 1


class Broken:
    def __init__(self, answers: list[Generation] | None = None) -> None:
        self.answers = answers

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.answers is None:
            raise RuntimeError("the server went away")
        return self.answers

    def close(self) -> None: ...


@pytest.mark.parametrize("backend", [Broken(), Broken([Generation(texts=["Score: 3"])])])
def test_a_failing_backend_fails_requests_not_the_caller(backend: Broken) -> None:
    client = client_for(backend, reward=RoleSettings("reward", **SAMPLED))
    outcomes = asyncio.run(client.run("reward", [reward_input("a"), reward_input("b")]))
    assert [o.failure for o in outcomes] == [Failure.BACKEND_ERROR] * 2
    assert client.stats.to_dict()["reward"]["final"] == {"backend_error": 2}


def test_a_parser_bug_is_a_counted_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(text: str) -> Parsed[AXTree]:
        raise IndexError("bug")

    monkeypatch.setattr(roles_module, "parse_world_model", explode)
    backend = Scripted(lambda *a: "<a11y></a11y>")
    client = client_for(backend, world_model=RoleSettings("world_model"))
    inp = WorldModelInput(PAGES[0], parse_action("go_back"))
    [outcome] = asyncio.run(client.run("world_model", [inp]))
    assert (outcome.failure, outcome.raw) == (Failure.PARSER_ERROR, "<a11y></a11y>")


# --- accounting ------------------------------------------------------------------------


def test_stats_serialise_and_merge_and_usage_is_recorded() -> None:
    usage = UsageTracker()
    backend = Scripted(lambda *a: "Score: 2")
    client = ModelClient(backend, {"reward": Role("reward", RoleSettings("reward"))},  # type: ignore[arg-type]
                         usage=usage, model_name="tiny")  # fmt: skip
    asyncio.run(client.run("reward", [reward_input("a"), reward_input("b")]))
    data = json.loads(json.dumps(client.stats.to_dict()))
    assert data["reward"]["final"] == {"ok": 2}
    merged = OutcomeStats()
    merged.merge(data)
    merged.merge(client.stats)
    assert merged.to_dict()["reward"]["final"] == {"ok": 4}
    assert merged.to_dict()["reward"]["requests"] == 4
    assert usage.counts("reward").calls == 2 and usage.counts("reward").prompt_tokens == 20
    client.close()
    assert backend.closed


# --- end to end on the tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_config: Callable[..., DictConfig]) -> Iterator[ModelClient]:
    """``model=tiny`` from the real config, with budgets small enough for a CPU test."""
    model = tiny_model_config(
        "model.roles.policy.n=2",
        "model.roles.world_model.max_new_tokens=24",
        "model.roles.world_model.max_retries=1",
        "model.roles.reward.max_new_tokens=24",
        "model.roles.reward.max_retries=1",
        "model.roles.judge.max_new_tokens=24",
        "model.roles.reflection.max_new_tokens=24",
    )
    client = ModelClient.from_config(model)
    yield client
    client.close()


def e2e_inputs() -> dict[str, list[object]]:
    step = Step(PAGES[0], "Open the sales menu.", parse_action("click [20]"))
    return {
        "world_model": [WorldModelInput(PAGES[1], parse_action("type [7] [design] [1]"))],
        "reward": [RewardInput("Find the design repo", (step,), PAGES[1])],
        "judge": [
            JudgeInput("Name a bestseller", (step,), answer="Quest Lumaflex Band"),
            JudgeInput("Find the repo", (), PAGES[1], parse_action("click [9]"), (PAGES[2],)),
        ],
        "reflection": [
            ReflectionInput("Find a book forum", parse_action("click [20]"), PAGES[0], PAGES[1])
        ],
    }


@pytest.mark.slow
def test_every_role_runs_end_to_end_on_the_tiny_model(tiny: ModelClient) -> None:
    """Random weights: mostly failures, but typed, counted, raw kept and nothing raised."""
    tokenizer = tiny.backend.tokenizer  # type: ignore[attr-defined]
    for role, inputs in e2e_inputs().items():
        messages = tiny.role(role).messages(inputs[0])
        prompt = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        assert prompt.startswith(f"<|im_start|>system\n{messages[0]['content']}<|im_end|>")
        assert prompt.endswith(f"{messages[-1]['content']}<|im_end|>\n<|im_start|>assistant\n")
        outcomes = asyncio.run(tiny.run(role, inputs))
        assert len(outcomes) == len(inputs)
        for outcome in outcomes:
            assert isinstance(outcome, Parsed) and isinstance(outcome.raw, str)
            assert outcome.failure is not Failure.BACKEND_ERROR, outcome.detail
            assert outcome.ok or outcome.failure in Failure
        final = tiny.stats.to_dict()[role]["final"]
        assert sum(final.values()) == len(inputs)


@pytest.mark.slow
def test_constrained_policy_answers_parse_and_name_elements_of_the_page(tiny: ModelClient) -> None:
    assert tiny.role("policy").settings.constrained  # conf/model/roles.yaml
    inputs = [policy_input(k, f"Task {k}") for k in range(len(PAGES))]
    rows = asyncio.run(tiny.sample("policy", inputs))
    for inp, row in zip(inputs, rows, strict=True):
        assert len(row) == 2
        for outcome in row:
            assert outcome.ok, (outcome.failure, outcome.reason, outcome.raw)
            action = outcome.value.action
            if action.kind in {ActionKind.CLICK, ActionKind.HOVER, ActionKind.TYPE}:
                assert inp.observation.get(action.target) is not None
    stats = tiny.stats.to_dict()["policy"]
    assert stats["attempts"].keys() == {"ok"}


@pytest.mark.slow
def test_constrained_scores_always_parse(tiny: ModelClient) -> None:
    sampled = RoleSettings("reward", temperature=0.7, max_new_tokens=24, constrained=True)
    reward = Role("reward", sampled)
    judge = Role("judge", RoleSettings("judge", max_new_tokens=24, constrained=True))
    client = ModelClient(tiny.backend, {"reward": reward, "judge": judge})
    inputs = e2e_inputs()
    [rewards] = asyncio.run(client.sample("reward", inputs["reward"], n=3))
    verdicts = asyncio.run(client.run("judge", inputs["judge"]))
    assert all(o.ok and o.value.score in {1, 2, 3, 4, 5} for o in rewards), rewards
    assert all(o.ok and o.value.score in {0, 0.5, 1} for o in verdicts), verdicts


def test_training_records_render_the_inference_prompt(tiny: ModelClient) -> None:
    """A record (messages + target) tokenises to the inference prompt followed by the target."""
    tokenizer = tiny.backend.tokenizer  # type: ignore[attr-defined]
    messages = list(tiny.role("policy").messages(policy_input(2)))
    target = answer("click [6]")
    asked = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    record = [*messages, {"role": "assistant", "content": target}]
    trained = tokenizer.apply_chat_template(record, tokenize=False)
    assert trained == f"{asked}{target}<|im_end|>\n"


@pytest.mark.slow
def test_constrained_reflection_always_ends_with_go_back(tiny: ModelClient) -> None:
    settings = RoleSettings("reflection", temperature=0.7, max_new_tokens=48, constrained=True)
    client = ModelClient(tiny.backend, {"reflection": Role("reflection", settings)})
    [outcomes] = asyncio.run(client.sample("reflection", e2e_inputs()["reflection"][:1], n=4))
    assert all(o.ok for o in outcomes), [(o.failure, o.raw) for o in outcomes]
