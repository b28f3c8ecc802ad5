"""WebArena's evaluators on WebArena-format eval specs: real ones copied by hand, edge cases,
and (when the shared corpus is there) every real spec scoring its own reference as 1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.data.tasks import Task, task_from_config
from websynthesis.env.base import EnvError
from websynthesis.evaluation.webarena_eval import (
    EvalResult,
    RoleJudge,
    clean_answer,
    evaluate_task,
    must_include,
    reddit_post_url,
    tokenize,
)
from websynthesis.roles.client import ModelClient, Role, RoleSettings

HOST = "http://ec2-3-14-123-57.us-east-2.compute.amazonaws.com"

# Real WebArena eval specs (tasks 0, 11, 16, 22, 45, 173, 436, 481, 604, 699), copied by hand.
REAL: dict[int, dict[str, Any]] = {
    0: {
        "intent": "What is the top-1 best-selling product in 2022",
        "eval": {
            "eval_types": ["string_match"],
            "reference_answers": {"exact_match": "Quest Lumaflex™ Band"},
            "reference_url": "",
            "program_html": [],
            "string_note": "",
        },
    },
    11: {
        "intent": "Tell me the the number of reviews that our store received by far that "
        'mention term "disappointed"',
        "eval": {
            "eval_types": ["string_match"],
            "reference_answers": {"must_include": ["6"]},
            "reference_url": "",
            "program_html": [],
            "string_note": "",
        },
    },
    16: {
        "intent": "Compare the time for walking and driving route from 5000 Fifth Avenue, "
        "Pittsburgh to UPMC family health center",
        "eval": {
            "eval_types": ["string_match"],
            "reference_answers": {"fuzzy_match": ["driving: 2min", "walking: 16min"]},
            "reference_url": "",
            "program_html": [],
            "string_note": "",
        },
    },
    22: {
        "intent": "List out reviewers, if exist, who mention about under water photo",
        "eval": {
            "eval_types": ["string_match"],
            "reference_answers": {"fuzzy_match": "N/A"},
            "reference_url": "",
            "program_html": [],
            "string_note": "There is no review about under water photo",
        },
    },
    45: {
        "intent": "Check out the most recent open issues",
        "eval": {
            "eval_types": ["url_match"],
            "reference_answers": None,
            "reference_url": f"{HOST}:8023/a11yproject/a11yproject.com/-/issues/"
            "?sort=created_asc&state=opened",
            "program_html": [],
            "url_note": "GOLD in PRED",
        },
    },
    173: {
        "intent": 'Open my latest updated issue that has keyword "better" in its title to check '
        "if it is closed",
        "eval": {
            "eval_types": ["string_match", "url_match"],
            "reference_answers": {"fuzzy_match": ["No, it is open"]},
            "reference_url": f"{HOST}:8023/byteblaze/empathy-prompts/-/issues/8",
            "program_html": [],
            "string_note": "",
            "url_note": "GOLD in PRED",
        },
    },
    436: {
        "intent": "I previously ordered some a mattress foundation around Feb or March 2023 and "
        "later cancelled. Can you reorder it for me?",
        "eval": {
            "eval_types": ["program_html"],
            "reference_answers": None,
            "reference_url": "",
            "program_html": [
                {
                    "url": "func:shopping_get_latest_order_url()",
                    "locator": 'document.querySelector(".order-details-items.ordered").outerText',
                    "required_contents": {"must_include": ["B07DFJ5XKH"]},
                }
            ],
        },
    },
    481: {
        "intent": "Abishek wants to check my dotfile configurations. Please invite him to the "
        "repo as a guest.",
        "eval": {
            "eval_types": ["program_html"],
            "reference_answers": None,
            "reference_url": "",
            "program_html": [
                {
                    "url": f"{HOST}:8023/byteblaze/dotfiles/-/project_members",
                    "locator": "func:gitlab_get_project_memeber_role(__page__, 'abisubramanya27')",
                    "required_contents": {"must_include": ["Guest"]},
                }
            ],
        },
    },
    604: {
        "intent": 'Post my question, "what is the SOTA web navigation agent repo", in a subreddit '
        "where I'm likely to get an answer",
        "eval": {
            "eval_types": ["url_match", "program_html"],
            "reference_answers": None,
            "reference_url": f"{HOST}:9999/f/deeplearning |OR| {HOST}:9999/f/MachineLearning "
            f"|OR| {HOST}:9999/f/singularity",
            "program_html": [
                {
                    "url": "func:reddit_get_post_url('__last_url__')",
                    "locator": "document.querySelector('.submission__inner').outerText",
                    "required_contents": {
                        "must_include": ["what is the SOTA web navigation agent repo"]
                    },
                }
            ],
            "url_note": "GOLD in PRED",
        },
    },
    699: {
        "intent": "Draft a new marketing price rule for spring sale that offers a 20 percent "
        "discount site-wide for all customers",
        "eval": {
            "eval_types": ["url_match", "program_html"],
            "reference_answers": None,
            "reference_url": f"{HOST}:7780/admin/sales_rule/promo_quote",
            "program_html": [
                {
                    "url": "last",
                    "locator": "document.querySelector(\"[name='name'\").value",
                    "required_contents": {"must_include": ["spring sale"]},
                },
                {
                    "url": "last",
                    "locator": "document.querySelector('[name=\"simple_action\"').value",
                    "prep_actions": [
                        "document.querySelector('[data-index=\"actions\"]')"
                        ".querySelector('.admin__collapsible-title').click()"
                    ],
                    "required_contents": {"exact_match": "by_percent"},
                },
            ],
            "url_note": "GOLD in PRED",
        },
    },
}


def task(task_id: int) -> Task:
    return task_from_config({"task_id": task_id, "sites": [], **REAL[task_id]})


def score(task_id: int, *, answer: str | None = None, url: str | None = None, **kw: Any) -> Any:
    return asyncio.run(evaluate_task(task(task_id), answer=answer, url=url, **kw)).score


class FakeJudge:
    """Answers by a lookup; records what it was asked."""

    def __init__(self, verdicts: dict[str, float | None]) -> None:
        self.verdicts, self.asked = verdicts, []

    async def same_answer(self, intent: str, reference: str, prediction: str) -> float | None:
        self.asked.append(("answer", reference, prediction))
        return self.verdicts.get(reference)

    async def same_reason(self, intent: str, reason: str, prediction: str) -> float | None:
        self.asked.append(("reason", reason, prediction))
        return self.verdicts.get(reason)


class FakePage:
    """A live page: URLs -> {script -> value}; ``None`` script gives the HTML."""

    def __init__(self, pages: dict[str, dict[str | None, Any]], url: str) -> None:
        self.pages, self.url, self.calls = pages, url, []

    def read_page(self, url: str | None = None, script: str | None = None) -> str:
        self.calls.append((url, script))
        if url is not None:
            self.url = url
        value = self.pages[self.url].get(script)
        if isinstance(value, Exception):
            raise value
        return value


def test_exact_match_cleans_quotes_and_case() -> None:
    assert score(0, answer='"quest lumaflex™ band"') == 1.0
    assert score(0, answer="Quest Lumaflex™ Band ") == 1.0
    assert score(0, answer="Quest Lumaflex Band") == 0.0
    assert score(0, answer=None) == 0.0  # never stopped: the empty answer


def test_must_include_single_character_is_token_level() -> None:
    assert score(11, answer="6") == 1.0
    assert score(11, answer="There are 6 reviews.") == 1.0
    assert score(11, answer="16") == 0.0  # "6" inside "16" is not a match
    assert score(11, answer="3.6") == 0.0
    assert tokenize("1,000 and 3.6, ok.") == ["1,000", "and", "3.6", ",", "ok", "."]
    # Several references, or longer ones: plain substrings, as in WebArena.
    assert must_include("6", "16", tokenized=False) == 1.0
    assert must_include("ab", "xaby", tokenized=True) == 1.0


def test_fuzzy_match_goes_through_the_judge_and_multiplies() -> None:
    judge = FakeJudge({"driving: 2min": 1.0, "walking: 16min": 1.0})
    assert score(16, answer="Driving 2 min, walking 16 min", judge=judge) == 1.0
    assert [ref for _, ref, _ in judge.asked] == ["driving: 2min", "walking: 16min"]
    assert score(16, answer="x", judge=FakeJudge({"driving: 2min": 1.0})) is None  # no verdict
    assert score(16, answer="x", judge=FakeJudge({"driving: 2min": 0.0})) == 0.0  # 0 wins
    assert score(16, answer="x") is None  # no judge: not evaluable, never 1
    assert score(16, answer="", judge=FakeJudge({})) == 0.0  # blank answers skip the judge


def test_fuzzy_na_exact_then_unachievable_reason() -> None:
    judge = FakeJudge({"There is no review about under water photo": 1.0})
    assert score(22, answer="N/A") == 1.0
    assert score(22, answer="No reviewer mentions it", judge=judge) == 1.0
    assert judge.asked == [
        ("reason", "There is no review about under water photo", "no reviewer mentions it")
    ]
    assert score(22, answer="Alice", judge=FakeJudge({})) is None


def test_url_match_gold_in_pred_with_query_rules() -> None:
    good = f"{HOST}:8023/a11yproject/a11yproject.com/-/issues/?state=opened&sort=created_asc"
    assert score(45, url=good) == 1.0
    assert score(45, url=good + "&page=2") == 1.0  # extra keys are fine
    assert score(45, url=good.replace("opened", "closed")) == 0.0
    assert score(45, url=f"{HOST}:8023/a11yproject/a11yproject.com/-/issues") == 0.0
    assert score(45, url=None) is None


def test_or_references_and_product_of_evaluators() -> None:
    judge = FakeJudge({"No, it is open": 1.0})
    issue = f"{HOST}:8023/byteblaze/empathy-prompts/-/issues/8"
    assert score(173, answer="It is still open", url=issue, judge=judge) == 1.0
    assert score(173, answer="It is still open", url=issue + "0", judge=judge) == 1.0  # substring
    assert score(173, answer="It is still open", url=f"{HOST}:8023/", judge=judge) == 0.0
    result = asyncio.run(evaluate_task(task(604), answer="", url=f"{HOST}:9999/f/singularity"))
    assert [c.evaluator for c in result.checks] == ["url_match", "program_html[0]"]
    assert result.checks[0].score == 1.0 and result.checks[1].score is None  # no live page
    assert result.score is None


def test_program_html_reads_the_live_page() -> None:
    post = f"{HOST}:9999/f/deeplearning/1234/what-is-the-sota"
    locator = REAL[604]["eval"]["program_html"][0]["locator"]
    page = FakePage(
        {
            post: {},
            f"{HOST}:9999/f/deeplearning/1234/": {
                locator: "what is the SOTA web navigation agent repo &amp; more"
            },
        },
        post,
    )
    assert score(604, answer="", url=post, page=page) == 1.0
    assert page.calls == [(f"{HOST}:9999/f/deeplearning/1234/", locator)]
    assert reddit_post_url(f"{HOST}:9999/forums") == f"{HOST}:9999/forums"


def test_program_html_prep_actions_exact_match_and_failures() -> None:
    rule = f"{HOST}:7780/admin/sales_rule/promo_quote/new"
    targets = REAL[699]["eval"]["program_html"]
    name_js, action_js = targets[0]["locator"], targets[1]["locator"]
    prep = targets[1]["prep_actions"][0]
    values = {name_js: "Spring Sale 2023", prep: "", action_js: "by_percent"}
    page = FakePage({rule: values}, rule)
    assert score(699, url=rule, page=page) == 1.0
    assert page.calls == [(None, name_js), (None, prep), (None, action_js)]
    page = FakePage({rule: {**values, action_js: "by_fixed"}}, rule)
    assert score(699, url=rule, page=page) == 0.0
    # A locator that throws selects "" (WebArena: "the page is wrong"): a 0, not a crash.
    page = FakePage({rule: {**values, name_js: ValueError("null has no value")}}, rule)
    assert score(699, url=rule, page=page) == 0.0
    # A browser that fails is not the agent's 0: not evaluable.
    page = FakePage({rule: {**values, action_js: EnvError("worker died")}}, rule)
    result = asyncio.run(evaluate_task(task(699), answer="", url=rule, page=page))
    assert result.score is None and "browser failed" in result.checks[-1].detail


def test_site_helpers_are_reported_not_evaluable() -> None:
    page = FakePage({}, HOST)
    for task_id in (436, 481):
        result = asyncio.run(evaluate_task(task(task_id), answer="", url=HOST, page=page))
        assert result.score is None and "helper" in result.checks[0].detail
    assert page.calls == []


def test_eval_result_product_rules() -> None:
    from websynthesis.evaluation.webarena_eval import Check

    assert EvalResult((Check("a", 1.0), Check("b", 1.0))).score == 1.0
    assert EvalResult((Check("a", None), Check("b", 0.0))).score == 0.0
    assert EvalResult((Check("a", None), Check("b", 1.0))).score is None
    assert clean_answer(" 'Yes' ") == "yes"


class _Verdicts:
    """A backend whose judge says what it is told, and records the prompts."""

    def __init__(self, text: str) -> None:
        self.text, self.prompts = text, []

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return [Generation(texts=[self.text] * r.sampling.n) for r in requests]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("verdict", "expected"), [("1", 1.0), ("0.5", 0.0), ("what?", None)])
def test_role_judge_partially_correct_is_zero(verdict: str, expected: float | None) -> None:
    backend = _Verdicts(f"Reason: compared.\nScore: {verdict}")
    client = ModelClient(backend, {"judge": Role("judge", RoleSettings(template="judge"))})
    judge = RoleJudge(client)
    assert asyncio.run(judge.same_answer("How long?", "2min", "two minutes")) == expected
    assert "The correct answer is: 2min" in backend.prompts[0]
    assert "two minutes" in backend.prompts[0]


def test_every_real_spec_scores_its_own_reference(webarena_tasks_path: Path) -> None:
    """On all 644 real tasks: the reference answer/URL passes exact_match, must_include and
    url_match; program_html without a page and fuzzy_match without a judge are unevaluable."""
    from websynthesis.data.tasks import load_tasks

    tasks = load_tasks(webarena_tasks_path)
    checked = 0
    for real in tasks:
        refs = real.eval.get("reference_answers") or {}
        answer = refs.get("exact_match") or " ; ".join(refs.get("must_include") or ["an answer"])
        url = (real.eval.get("reference_url") or "").split(" |OR| ")[0] or None
        result = asyncio.run(evaluate_task(real, answer=answer, url=url))
        for check in result.checks:
            exact = ("string_match/exact_match", "string_match/must_include", "url_match")
            assert check.score == (1.0 if check.evaluator in exact else None), (real.task_id, check)
            checked += 1
    assert checked > 644
    json.dumps(result.to_dict())
