"""WebArena's evaluators on our types: ``string_match``, ``url_match``, ``program_html``.

The rules follow ``web-arena-x/webarena:evaluation_harness/evaluators.py`` so scores compare
with published numbers:

- answers are cleaned (surrounding quotes stripped, lower case, trimmed) on both sides;
- ``must_include`` matches substrings, except that a list of exactly one single-character
  reference matches whole tokens, so ``"0"`` does not match inside ``"10"`` (WebArena uses
  NLTK's ``word_tokenize``; :func:`tokenize` is a small stand-in that agrees with it on what
  matters here: numbers like ``3.6`` or ``1,000`` stay one token, punctuation splits off);
- ``fuzzy_match`` asks an LLM judge; "partially correct" counts 0, an empty answer is never
  sent to the judge; a ``"N/A"`` reference takes an exact match, else the judge compares the
  reason given with the task's ``string_note`` (WebArena's ``llm_ua_match``);
- ``url_match`` (``GOLD in PRED``): references split on `` |OR| ``; some reference's
  netloc+path must occur in the page's, and every reference query key must have one of its
  values in the page's query;
- ``program_html`` navigates (``last``, a URL, or ``func:reddit_get_post_url('__last_url__')``),
  selects with a locator (empty = whole page, ``document.…`` JS after optional
  ``prep_actions``) and checks ``exact_match`` / ``must_include`` (items may hold `` |OR| ``);
- the task's score is the product of every check.

What WebArena would crash on or silently miss is a check with ``score=None`` here ("not
evaluable", with the reason): no live page for ``program_html``, helper functions that need a
site's admin API (``shopping_get_latest_order_url``...), an unreadable judge verdict. A task
with a 0 check scores 0 whatever else happened; otherwise one unevaluable check makes the
task unevaluable. Nothing is ever silently 1. WebArena strings are never ``eval``-ed.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from websynthesis.data.tasks import Task
from websynthesis.env.base import EnvError
from websynthesis.roles.client import ModelClient
from websynthesis.roles.prompts import JudgeInput

OR = " |OR| "
GOLD_IN_PRED = "GOLD in PRED"
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]")
_REDDIT_POST_URL = re.compile(r"""func:reddit_get_post_url\(\s*['"]__last_url__['"]\s*\)""")


class PageReader(Protocol):
    """What ``program_html`` needs of a live browser (:meth:`WebEnv.read_page
    <websynthesis.env.base.WebEnv.read_page>`): open ``url`` (``None``: stay) and return the
    JavaScript expression ``script`` as text (``None``: the page's HTML)."""

    def read_page(self, url: str | None = None, script: str | None = None) -> str: ...


class AnswerJudge(Protocol):
    """An LLM grader for ``fuzzy_match``: 1.0 correct, 0.0 not, ``None`` no verdict."""

    async def same_answer(self, intent: str, reference: str, prediction: str) -> float | None:
        """Whether ``prediction`` answers ``intent`` like ``reference`` (WebArena's fuzzy match)."""
        ...

    async def same_reason(self, intent: str, reason: str, prediction: str) -> float | None:
        """Whether ``prediction`` reports ``reason`` for the task being unachievable."""
        ...


@dataclass(frozen=True)
class Check:
    """One sub-check: ``evaluator`` names it (``string_match/must_include``, ``program_html[2]``);
    ``score`` is ``None`` when it could not be evaluated, ``detail`` says why or what was seen."""

    evaluator: str
    score: float | None
    detail: str = ""


@dataclass(frozen=True)
class EvalResult:
    """Every check of one task; :attr:`score` is their product (see the module docstring)."""

    checks: tuple[Check, ...]

    @property
    def score(self) -> float | None:
        scores = [check.score for check in self.checks]
        if any(score == 0.0 for score in scores):
            return 0.0
        if any(score is None for score in scores):
            return None
        product = 1.0
        for score in scores:
            product *= float(score or 0.0)
        return product

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "checks": [
                {"evaluator": c.evaluator, "score": c.score, "detail": c.detail}
                for c in self.checks
            ],
        }


async def evaluate_task(
    task: Task,
    *,
    answer: str | None,
    url: str | None,
    page: PageReader | None = None,
    judge: AnswerJudge | None = None,
) -> EvalResult:
    """Score one finished episode of ``task`` with the evaluators its ``eval`` spec names.

    ``answer`` is the final ``stop`` answer (``None``: the agent never stopped, scored as the
    empty answer, as WebArena's fake stop does); ``url`` is the last page's URL; ``page`` the
    live browser (the episode's env), needed by ``program_html`` only; ``judge`` is needed
    by ``fuzzy_match`` only.
    """
    spec = task.eval
    checks: list[Check] = []
    for eval_type in spec.get("eval_types", []):
        if eval_type == "string_match":
            checks += await string_match(spec, task.intent, answer or "", judge)
        elif eval_type == "url_match":
            checks.append(url_match(spec, url))
        elif eval_type == "program_html":
            checks += program_html(spec, page, url)
        else:  # load_tasks refuses these; a hand-built Task may not
            checks.append(Check(eval_type, None, f"unknown evaluator {eval_type!r}"))
    if not checks:
        checks.append(Check("eval", None, "the task's eval spec names no evaluator"))
    return EvalResult(tuple(checks))


# --- string_match -----------------------------------------------------------------------


def clean_answer(answer: str) -> str:
    """WebArena's ``clean_answer``: trim, drop one pair of surrounding quotes, lower-case."""
    answer = answer.strip()
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "'\"":
        answer = answer[1:-1]
    return answer.lower()


def tokenize(text: str) -> list[str]:
    """Words, numbers (``3.6``, ``1,000`` whole) and single punctuation marks."""
    return _TOKEN.findall(text)


def exact_match(reference: str, prediction: str) -> float:
    return float(clean_answer(prediction) == clean_answer(reference))


def must_include(reference: str, prediction: str, *, tokenized: bool = False) -> float:
    """Substring match; whole-token match for a lone single-character reference."""
    ref, pred = clean_answer(reference), clean_answer(prediction)
    if tokenized and len(ref) == 1 and len(tokenize(ref)) == 1:
        return float(ref in tokenize(pred))
    return float(ref in pred)


async def string_match(
    spec: Mapping[str, Any], intent: str, answer: str, judge: AnswerJudge | None
) -> list[Check]:
    """The checks of ``reference_answers`` against the (cleaned) final answer."""
    pred = clean_answer(answer)
    references = spec.get("reference_answers") or {}
    if not references:
        return [Check("string_match", None, "no reference_answers")]
    checks = []
    for approach, value in references.items():
        name = f"string_match/{approach}"
        if approach == "exact_match":
            checks.append(Check(name, exact_match(str(value), pred), f"answer {pred!r}"))
        elif approach == "must_include":
            values = list(value)
            for ref in values:
                score = must_include(ref, pred, tokenized=len(values) == 1)
                checks.append(Check(name, score, f"{ref!r} in {pred!r}"))
        elif approach == "fuzzy_match":
            checks += await _fuzzy(name, value, spec, intent, pred, judge)
        else:
            checks.append(Check(name, None, f"unknown approach {approach!r}"))
    return checks


async def _fuzzy(
    name: str,
    value: Any,
    spec: Mapping[str, Any],
    intent: str,
    pred: str,
    judge: AnswerJudge | None,
) -> list[Check]:
    if value == "N/A":
        if exact_match("N/A", pred):
            return [Check(name, 1.0, "answered N/A")]
        if judge is None:
            return [Check(name, None, "needs a judge (unachievable-reason match)")]
        reason = str(spec.get("string_note") or "")
        score = await judge.same_reason(intent, reason, pred)
        return [Check(name, score, f"reason {pred!r} vs {reason!r}")]
    checks = []
    for ref in list(value):
        if not pred:  # WebArena: the judge misreads blank answers
            checks.append(Check(name, float(not ref), "empty answer"))
        elif judge is None:
            checks.append(Check(name, None, f"needs a judge for {ref!r}"))
        else:
            score = await judge.same_answer(intent, ref, pred)
            checks.append(Check(name, score, f"{pred!r} vs {ref!r}"))
    return checks


# --- url_match --------------------------------------------------------------------------


def _clean_url(url: str) -> str:
    return str(url).rstrip("/")


def _split_url(url: str) -> tuple[str, dict[str, list[str]]]:
    parsed = urlparse(url)
    return _clean_url(parsed.netloc + parsed.path), parse_qs(parsed.query)


def url_match(spec: Mapping[str, Any], url: str | None) -> Check:
    """``GOLD in PRED``: a reference base inside the page's base, every query key satisfied."""
    rule = spec.get("url_note", GOLD_IN_PRED)
    if rule != GOLD_IN_PRED:
        return Check("url_match", None, f"unknown url_note {rule!r}")
    if url is None:
        return Check("url_match", None, "no final URL")
    references = [_clean_url(ref) for ref in str(spec.get("reference_url") or "").split(OR)]
    ref_bases: list[str] = []
    ref_queries: defaultdict[str, set[str]] = defaultdict(set)
    for ref in references:
        base, query = _split_url(ref)
        ref_bases.append(base)
        for key, values in query.items():
            ref_queries[key].update(values)
    pred_base, pred_query = _split_url(_clean_url(url))
    score = float(any(base in pred_base for base in ref_bases))
    for key, values in ref_queries.items():
        score *= float(any(value in pred_query.get(key, []) for value in values))
    return Check("url_match", score, f"page {url}")


# --- program_html -----------------------------------------------------------------------


class _NotEvaluable(Exception):
    """A program_html target that cannot be checked here; the message says why."""


def program_html(spec: Mapping[str, Any], page: PageReader | None, url: str | None) -> list[Check]:
    """One check per target, read from the live browser; all unevaluable without one."""
    targets: Sequence[Mapping[str, Any]] = spec.get("program_html") or []
    if not targets:
        return [Check("program_html", None, "no program_html targets")]
    checks = []
    for index, target in enumerate(targets):
        name = f"program_html[{index}]"
        if page is None:
            checks.append(Check(name, None, "no live page"))
            continue
        try:
            selected, url = _select(target, page, url)
        except _NotEvaluable as why:
            checks.append(Check(name, None, str(why)))
            continue
        score = _required(target.get("required_contents") or {}, selected)
        checks.append(Check(name, score, f"selected {selected[:200]!r}"))
    return checks


def _select(target: Mapping[str, Any], page: PageReader, url: str | None) -> tuple[str, str | None]:
    """What the target's locator selects on its page, and the URL the browser is now at."""
    where = str(target.get("url", "last"))
    if where.startswith("func:"):
        if not _REDDIT_POST_URL.fullmatch(where) or url is None:
            raise _NotEvaluable(f"helper {where!r} needs a site API or the final URL")
        where = reddit_post_url(url)
    go = None if where == "last" else where
    locator = str(target.get("locator", ""))
    if locator.strip() and not locator.startswith(("document.", "[...document.")):
        raise _NotEvaluable(f"locator {locator[:60]!r} needs a site helper")
    try:
        for prep in target.get("prep_actions") or []:
            try:
                page.read_page(go, prep)
            except EnvError:
                raise
            except Exception:  # WebArena ignores failed preparation
                break
            go = None  # navigated already
        if not locator.strip():
            return html.unescape(page.read_page(go, None)), go or url
        try:
            value = page.read_page(go, locator)
        except EnvError:
            raise
        except Exception:  # WebArena: "the page is wrong, return empty"
            value = ""
    except EnvError as error:
        raise _NotEvaluable(f"the browser failed: {error}") from error
    return html.unescape(value or ""), go or url


def _required(required: Mapping[str, Any], selected: str) -> float | None:
    if "exact_match" in required:
        return exact_match(str(required["exact_match"]), selected)
    if "must_include" in required:
        score = 1.0
        for content in required["must_include"]:
            score *= float(any(must_include(alt, selected) for alt in str(content).split(OR)))
        return score
    return None


def reddit_post_url(url: str) -> str:
    """WebArena's ``reddit_get_post_url``: ``/f/<forum>/<post id>/`` of a post or comment URL."""
    parsed = urlparse(url)
    parts = parsed.path.split("/")
    if len(parts) < 4 or parts[1] != "f":
        return url
    return f"{parsed.scheme}://{parsed.netloc}/f/{parts[2]}/{parts[3]}/"


# --- the judge role as fuzzy matcher ------------------------------------------------------


class RoleJudge:
    """:class:`AnswerJudge` through the ``judge`` role and its one prompt.

    The judge sees the reference folded into its objective and the prediction as the final
    answer; only a full score (1) counts, so "partially correct" (0.5) is 0 as in WebArena.
    An unreadable verdict is ``None`` (not evaluable), never 0.
    """

    def __init__(self, client: ModelClient, role: str = "judge") -> None:
        self.client, self.role = client, role

    async def same_answer(self, intent: str, reference: str, prediction: str) -> float | None:
        objective = (
            f"{intent}\n\nThe correct answer is: {reference}\n"
            "Score 1 only if the final answer is semantically equivalent to it (different "
            "wording is fine; 'N/A' means not achievable); otherwise 0."
        )
        return await self._ask(objective, prediction)

    async def same_reason(self, intent: str, reason: str, prediction: str) -> float | None:
        objective = (
            f"{intent}\n\nThis task cannot be completed because: {reason}\n"
            "Score 1 only if the final answer reports that reason, even implicitly; otherwise 0."
        )
        return await self._ask(objective, prediction)

    async def _ask(self, objective: str, prediction: str) -> float | None:
        [outcome] = await self.client.run(self.role, [JudgeInput(objective, answer=prediction)])
        if outcome.value is None:
            return None
        return float(outcome.value.score >= 1.0)
