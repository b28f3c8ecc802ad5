"""Model output in, typed outcomes out: one parser per role, none of which ever raises.

Model text is untrusted. The reference code turned a reward it could not read into 0 (the
same as "terrible", B6), an unreadable world-model answer into an empty page (B5) and searched
the raw policy reasoning for "stop" (B1). Here every parser returns a :class:`Parsed`: the
value when the text holds one, else a :class:`Failure` kind that callers count and may retry,
and always the raw text, so nothing is lost and nothing is guessed silently.

Some failures are *soft*: the text was read but does not pass a check. They still carry the
value read, so a caller can choose to use it: ``invalid_action`` (a well-formed action that
the observation refuses) and ``malformed_tree`` (a tree read leniently, with structural errors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, check_declared
from websynthesis.web.actions import (
    Action,
    ActionKind,
    ActionParseError,
    Reason,
    extract_thought_and_action,
)
from websynthesis.web.observation import AXTree, ErrorKind, parse_axtree
from websynthesis.web.tree_delta import (
    CHANGES_CLOSE,
    CHANGES_OPEN,
    DeltaError,
    apply_delta,
    parse_delta,
)

T = TypeVar("T")


class Failure(StrEnum):
    """Why an output has no usable value; the values are the keys counted in ``stats.json``."""

    EMPTY = "empty"  # nothing but whitespace
    BACKEND_ERROR = "backend_error"  # the request failed; ``detail`` is the backend's error
    PARSER_ERROR = "parser_error"  # a parser bug, caught so one answer cannot end a run
    NO_ACTION = "no_action"  # no action located (no answer phrase, ambiguous, cut off)
    UNPARSABLE_ACTION = "unparsable_action"  # an action was located but is not in the grammar
    INVALID_ACTION = "invalid_action"  # well-formed, but the observation refuses it (soft)
    NO_TREE = "no_tree"  # no accessibility-tree element in the text
    MALFORMED_TREE = "malformed_tree"  # a tree with structural errors or cut off (soft)
    BAD_DELTA = "bad_delta"  # a <changes> block that does not read or apply to the page
    NO_SCORE = "no_score"  # no score found
    SCORE_OUT_OF_RANGE = "score_out_of_range"  # a score outside the scale (never clamped)
    NO_GO_BACK = "no_go_back"  # a reflection that does not end with go_back
    NO_REASON = "no_reason"  # a reflection that gives no reason


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """One sample's outcome. ``ok`` iff there is no ``failure``.

    ``value`` is set when ``ok``, and also for the soft failures (see the module docstring).
    ``reason`` refines the failure for counting (an action :class:`Reason`, a tree
    :class:`ErrorKind`); ``detail`` is a message for logs and re-prompts. ``attempts`` and
    ``truncated`` (the sample hit its token limit) are filled in by the client.
    """

    raw: str
    value: T | None = None
    failure: Failure | None = None
    reason: str = ""
    detail: str = ""
    attempts: int = 1
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


def _fail(
    raw: str, failure: Failure, reason: str = "", detail: str = "", value: T | None = None
) -> Parsed[T]:
    return Parsed(raw, value, failure, str(reason), detail)


# --- policy and reflection ------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """A policy step: the reasoning and the action it commits to."""

    thought: str
    action: Action


@dataclass(frozen=True)
class Reflection:
    """Why a tried action does not help; the response always ends with ``go_back``."""

    reason: str


# Parse errors that mean "no action was found", as opposed to "the action found is malformed".
_NOT_LOCATED = frozenset(
    {Reason.NO_ANSWER_PHRASE, Reason.NO_ACTION, Reason.UNCLOSED_FENCE, Reason.AMBIGUOUS_ACTION}
)
URL_NOT_ALLOWED = "url_not_allowed"


def parse_policy(
    text: str,
    observation: AXTree | None = None,
    allowed_hosts: frozenset[str] = frozenset(),
    actions: ActionSet = WEBARENA_ACTIONS,
) -> Parsed[Decision]:
    """Read a policy response, then check its action against the environment's declared
    ``actions`` and the page it was written for.

    ``allowed_hosts`` (lower case), when given, is the allow-list for ``goto`` URLs.
    """
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    try:
        thought, action = extract_thought_and_action(text)
    except ActionParseError as error:
        kind = Failure.NO_ACTION if error.reason in _NOT_LOCATED else Failure.UNPARSABLE_ACTION
        return _fail(text, kind, error.reason, error.message)
    decision = Decision(thought, action)
    declared = check_declared(action, actions)
    if not declared:
        return _fail(text, Failure.INVALID_ACTION, declared.reason, declared.message, decision)
    if observation is not None:
        check = action.validate(observation)
        if not check:
            return _fail(text, Failure.INVALID_ACTION, check.reason, check.message, decision)
    if action.kind is ActionKind.GOTO and allowed_hosts:
        host = _host(action.text or "")
        if host not in allowed_hosts:
            detail = f"{host or action.text!r} is not an allowed site"
            return _fail(text, Failure.INVALID_ACTION, URL_NOT_ALLOWED, detail, decision)
    return Parsed(text, decision)


def allowed_hosts(sites: Iterable[str]) -> frozenset[str]:
    """The hosts of the sites given as URLs; sites given by name add nothing to check."""
    return frozenset(host for host in map(_host, sites) if host)


def _host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def parse_reflection(text: str) -> Parsed[Reflection]:
    """Read a reflection: reasoning, then the answer phrase and ``go_back``."""
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    try:
        thought, action = extract_thought_and_action(text)
    except ActionParseError as error:
        return _fail(text, Failure.NO_GO_BACK, error.reason, error.message)
    if action.kind is not ActionKind.GO_BACK:
        return _fail(text, Failure.NO_GO_BACK, action.kind.value, f"ends with {action}")
    if not thought:
        return _fail(text, Failure.NO_REASON)
    return Parsed(text, Reflection(thought))


# --- world model -------------------------------------------------------------------------

_A11Y_BLOCK = re.compile(r"<a11y>(.*?)</a11y>", re.IGNORECASE | re.DOTALL)
_A11Y_OPEN = re.compile(r"<a11y>", re.IGNORECASE)
_FENCE_LINE = re.compile(r"^[ \t]*```[\w-]*[ \t]*(?:\r?\n|$)", re.MULTILINE)
_ENVELOPE = frozenset({ErrorKind.JUNK_BEFORE, ErrorKind.JUNK_AFTER})
UNCLOSED_TAG = "unclosed_a11y"


def parse_world_model(text: str) -> Parsed[AXTree]:
    """Read a predicted page: inside ``<a11y>…</a11y>`` if present, else the bare text.

    Markdown fences and prose around the tree are dropped and are not errors of the tree. A
    tree with structural errors is returned (soft ``malformed_tree``) with its errors in
    ``detail``, as is one whose ``<a11y>`` never closes (the answer was cut off).
    """
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    blocks = [block for block in _A11Y_BLOCK.findall(text) if block.strip()]
    unclosed = False
    if blocks:
        body = blocks[-1]
    else:
        opened = list(_A11Y_OPEN.finditer(text))
        unclosed = bool(opened)
        body = text[opened[-1].end() :] if opened else text
    tree = parse_axtree(_FENCE_LINE.sub("", body).strip())
    if not tree.nodes:
        return _fail(text, Failure.NO_TREE, detail="no accessibility-tree element found")
    if any(error.kind in _ENVELOPE for error in tree.errors):
        tree = AXTree.from_nodes(
            tree.nodes, header=tree.header, truncated=tree.truncated, dialect=tree.dialect
        )
    if tree.errors:
        detail = "; ".join(str(error) for error in tree.errors[:3])
        return _fail(text, Failure.MALFORMED_TREE, tree.errors[0].kind, detail, tree)
    if unclosed:
        return _fail(text, Failure.MALFORMED_TREE, UNCLOSED_TAG, "<a11y> is never closed", tree)
    return Parsed(text, tree)


_CHANGES_OPEN = re.compile(re.escape(CHANGES_OPEN), re.IGNORECASE)
_CHANGES_CLOSE = re.compile(re.escape(CHANGES_CLOSE), re.IGNORECASE)


def _blank_line(match: re.Match[str]) -> str:
    return "\n" if match.group().endswith("\n") else ""


def parse_world_model_delta(text: str, current: AXTree) -> Parsed[AXTree]:
    """Read a predicted change and apply it to ``current``; a whole page is read as such.

    The answer is a ``<changes>`` block (see :mod:`websynthesis.web.tree_delta`; prose and
    fences around it are ignored, an empty block is the page unchanged) or, for a
    navigation, a whole page as :func:`parse_world_model` reads it: whichever opens last.
    A block that does not read, or names ids that ``current`` lacks, is ``bad_delta``
    with the :class:`~websynthesis.web.tree_delta.DeltaErrorKind` as reason; so is one
    that never closes (cut off: applying part of a change would guess the rest).
    """
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    opened = list(_CHANGES_OPEN.finditer(text))
    pages = list(_A11Y_OPEN.finditer(text))
    if not opened or (pages and pages[-1].start() > opened[-1].start()):
        return parse_world_model(text)
    start = opened[-1].end()
    closed = _CHANGES_CLOSE.search(text, start)
    inner = text[start : closed.start()] if closed else text[start:].rstrip()
    inner = _FENCE_LINE.sub(_blank_line, inner)  # kept as blank lines: line numbers stay
    block = CHANGES_OPEN + inner + (CHANGES_CLOSE if closed else "")
    try:
        tree = apply_delta(current, parse_delta(block))
    except DeltaError as error:
        return _fail(text, Failure.BAD_DELTA, error.kind, str(error))
    if tree.trailer:  # as a page answer reads: nothing after the last line
        tree = AXTree.from_nodes(
            tree.nodes, header=tree.header, truncated=tree.truncated, dialect=tree.dialect
        )
    if tree.errors:  # the current page had them
        detail = "; ".join(str(error) for error in tree.errors[:3])
        return _fail(text, Failure.MALFORMED_TREE, tree.errors[0].kind, detail, tree)
    return Parsed(text, tree)


# --- reward and judge --------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreScale:
    """The closed range a reward is given on (the reference's 1–5 by default)."""

    low: float = 1.0
    high: float = 5.0

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)  # config values may be ints
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"bad score scale [{self.low}, {self.high}]")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def levels(self, count: int = 5) -> list[float]:
        """``count`` evenly spaced anchor scores from low to high (the rubric's levels)."""
        step = (self.high - self.low) / (count - 1)
        return [self.low + step * k for k in range(count)]


DEFAULT_SCALE = ScoreScale()


@dataclass(frozen=True)
class Rating:
    """A score with the reasoning given for it."""

    score: float
    reason: str


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_DECORATION = r"[\s*_`\"'\[(]*"
# "Score: 4", "**Score**: 4.5", "score = 4", "Score is 4/5", "Score (1-5): [4] out of 5".
_SCORE = re.compile(
    rf"\bscore\b[\s*_]*(?:\([^()\n]*\)[\s*_]*)?(?:[:=]|\bis\b)"
    rf"{_DECORATION}(?P<value>{_NUMBER})(?!\w|\.\d)"
    rf"(?:[\s*_`\"'\])]*(?:/|\bout\s+of\b)\s*(?P<of>{_NUMBER}))?",
    re.IGNORECASE,
)
_BARE_NUMBER = re.compile(rf"{_DECORATION}(?P<value>{_NUMBER})[\s*_`\"'\]).]*")
_REASON_LABEL = re.compile(
    r"(?:^|\n)[ \t*_#]*(?:reason(?:ing)?|thoughts?|rationale|explanation)[\s*_]*:[\s*_]*",
    re.IGNORECASE,
)
# A line that states the verdict instead of reasoning toward it: where a reason ends.
_VERDICT_LINE = re.compile(
    r"^[ \t*_#>-]*(?:final\s+)?"
    r"(?:score|status|verdict|judge?ment|result|outcome|on\s+the\s+right\s+track)\b.*$\n?",
    re.IGNORECASE | re.MULTILINE,
)


def parse_reward(text: str, scale: ScoreScale = DEFAULT_SCALE) -> Parsed[Rating]:
    """Read ``Reason: … / Score: …`` in either order, with markdown, decimals or ``x/high``.

    The last score label counts. A fraction counts only over the scale's top (``4/5`` on 1–5);
    another denominator, or a score outside the scale, is ``score_out_of_range``: clamping
    would turn a misread into a confident answer.
    """
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    found = _find_score(text)
    if found is None:
        return _fail(text, Failure.NO_SCORE)
    value, of = found
    if of is not None and of != scale.high:
        shown = f"{format_number(value)}/{format_number(of)}"
        detail = f"scored {shown}, not on the {format_number(scale.high)} scale"
        return _fail(text, Failure.SCORE_OUT_OF_RANGE, "other_scale", detail)
    if not scale.low <= value <= scale.high:
        bounds = f"[{format_number(scale.low)}, {format_number(scale.high)}]"
        detail = f"{format_number(value)} is outside {bounds}"
        return _fail(text, Failure.SCORE_OUT_OF_RANGE, detail=detail)
    return Parsed(text, Rating(value, _reason(text)))


_VERDICT_LABEL = re.compile(
    r"\b(?:score|status|verdict|judge?ment|result|outcome|evaluation|answer)\b[\s*_]*:"
    r"[\s*_`\"'\[(]*(?P<word>[a-z][a-z /-]*)",
    re.IGNORECASE,
)
_ON_TRACK_FIELD = re.compile(
    r"\bon\s+the\s+right\s+track\b[^:\n]*:[\s*_\"']*(?P<answer>yes|no)\b", re.IGNORECASE
)
_DONE = r"(?:success|successful|successfully\s+completed|complete|completed|correct|done|achieved)"
_WORDS = (  # whole phrases only; negations are their own phrases, so "not complete" is 0
    (0.0, re.compile(
        rf"not(?:\s+yet)?\s+(?:a\s+)?{_DONE}|unsuccessful|incomplete|failure|failed|fail"
        r"|incorrect|wrong|off[\s-]track|no"
    )),
    (0.5, re.compile(
        r"on[\s-](?:the\s+)?(?:right\s+)?track|in\s+progress"
        r"|partial(?:ly)?(?:\s+(?:success|successful|complete|completed|correct))?"
    )),
    (1.0, re.compile(rf"{_DONE}|yes")),
)  # fmt: skip


def parse_judge(text: str) -> Parsed[Rating]:
    """Read a verdict in [0, 1]: complete 1, on track 0.5, wrong 0.

    Accepted: a labelled number (``Score: 0.5``, any value in [0, 1], fractions as ratios);
    a labelled verdict word (``Status: success``, ``Verdict: on track``, ``NOT SUCCESS``),
    with WebDreamer's ``On the right track to success: yes`` lifting a failure to 0.5; or a
    reply that is nothing but a verdict. Words are read only in those places, because prose
    ("the task is not yet complete") says too much to score.
    """
    if not text.strip():
        return _fail(text, Failure.EMPTY)
    found = _find_score(text)
    if found is not None:
        value, of = found
        if of is not None:
            if of <= 0:
                return _fail(text, Failure.SCORE_OUT_OF_RANGE, detail=f"denominator {of}")
            value /= of
        if not 0.0 <= value <= 1.0:
            detail = f"{format_number(value)} is outside [0, 1]"
            return _fail(text, Failure.SCORE_OUT_OF_RANGE, detail=detail)
        return Parsed(text, Rating(value, _reason(text)))
    labelled = [_verdict(m["word"]) for m in _VERDICT_LABEL.finditer(text)]
    verdicts = [v for v in labelled if v is not None]
    verdict = verdicts[-1] if verdicts else _verdict(text.strip(" \t\r\n*_`\"'.!"))
    if verdict is None:
        return _fail(text, Failure.NO_SCORE)
    on_track = _ON_TRACK_FIELD.search(text)
    if verdict == 0.0 and on_track and on_track["answer"].lower() == "yes":
        verdict = 0.5
    return Parsed(text, Rating(verdict, _reason(text)))


def format_rating(rating: Rating) -> str:
    """The canonical ``Reason: … / Score: …`` answer (targets for reward and judge data)."""
    return f"Reason: {rating.reason}\nScore: {format_number(rating.score)}"


def _find_score(text: str) -> tuple[float, float | None] | None:
    """The last labelled score (and its denominator), or a reply that is only a number."""
    matches = list(_SCORE.finditer(text))
    if matches:
        last = matches[-1]
        value, of = _float(last["value"]), last["of"]
        return (value, _float(of) if of is not None else None) if value is not None else None
    bare = _BARE_NUMBER.fullmatch(text.strip())
    value = _float(bare["value"]) if bare else None
    return None if value is None else (value, None)


def _float(token: str) -> float | None:
    value = float(token)
    return value if math.isfinite(value) else None


def _verdict(phrase: str) -> float | None:
    """The score of a phrase that is nothing but a verdict (``Not success``, ``on track``)."""
    phrase = " ".join(phrase.lower().split())
    for value, pattern in _WORDS:
        if pattern.fullmatch(phrase):
            return value
    return None


def _reason(text: str) -> str:
    """After a ``Reason:`` label up to a verdict line; else the text without verdict lines."""
    labels = list(_REASON_LABEL.finditer(text))
    if labels:
        rest = text[labels[-1].end() :]
        verdict = _VERDICT_LINE.search(rest)
        return (rest[: verdict.start()] if verdict else rest).strip()
    if _BARE_NUMBER.fullmatch(text.strip()):
        return ""
    return _VERDICT_LINE.sub("", text).strip()


def format_number(value: float) -> str:
    """A number as a person writes it: ``4``, ``4.5``, ``0.25`` (exact: repr of the float)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def failure_label(outcome: Parsed[Any]) -> str:
    """``kind/reason`` (or ``kind``) of a failed outcome: the key it is counted under."""
    return f"{outcome.failure}/{outcome.reason}" if outcome.reason else str(outcome.failure)
