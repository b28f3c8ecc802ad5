"""Actions for the policy: the public action API, and pulling (thought, action) out of a response.

The action space itself (the :class:`Action` type, :func:`parse_action`, validation, dedup,
BrowserGym conversion) lives in :mod:`websynthesis.web.action_space` and is re-exported here so
callers import everything from one place. This module adds what reads whole model responses.

Why extraction is its own careful step: the reference decided "is this a stop?" by searching the
raw response, reasoning included (audit B1, B2), and its regexes lost un-fenced ``go_back`` and
any response that wrote "step by step" without hyphens (2.2). Here the action is read only after
the LAST answer phrase, then parsed by the one grammar; nothing in the reasoning is ever an
action.

Where the action is looked for, in order:

1. After the last answer phrase ("In summary, the next action I will perform is"; any case,
   flexible whitespace, optional comma; bold, colon, quotes or a list dash may follow it).
2. A response that is one line and nothing but an action (``click [12]``), as a fine-tuned
   policy may emit.
3. After the last ``Action:`` label (WebEvolver's ``Thought: ... Action: ```...``` ``).
4. The only fenced (```) block in the response that holds an action, if it ends the response
   (only punctuation or markdown after it). Two or more action blocks are ambiguous; a lone block
   followed by prose ("```stop [N/A]``` would be wrong here") is a quotation, not a decision.

After a marker (1 or 3) the action may be fenced with any number of backticks, with or without
a language tag or newlines inside; or un-fenced on the first non-empty line (trailing period or
markdown dropped, trailing prose cut at a ``]``); or, if that line is prose, in the first ```
block that follows. Text after the action is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from websynthesis.web.action_parser import parse_action
from websynthesis.web.action_space import (
    BROWSERGYM_SCROLL_PX,
    ELEMENT_KINDS,
    KEY_NAMES,
    SELECTABLE_ROLES,
    TYPEABLE_ROLES,
    Action,
    ActionKind,
    ActionParseError,
    AXNodeLike,
    AXTreeLike,
    Reason,
    ValidationResult,
    equivalence_key,
    equivalent,
    listed_options,
)

__all__ = [
    "ANSWER_PHRASE",
    "BROWSERGYM_SCROLL_PX",
    "ELEMENT_KINDS",
    "KEY_NAMES",
    "SELECTABLE_ROLES",
    "TYPEABLE_ROLES",
    "AXNodeLike",
    "AXTreeLike",
    "Action",
    "ActionKind",
    "ActionParseError",
    "Reason",
    "ValidationResult",
    "equivalence_key",
    "equivalent",
    "extract_action",
    "extract_thought",
    "extract_thought_and_action",
    "format_response",
    "listed_options",
    "parse_action",
]

ANSWER_PHRASE = "In summary, the next action I will perform is"
_FENCE = "```"

_ANSWER_PHRASE_RE = re.compile(
    r"in\s+summary\s*,?\s*the\s+next\s+action\s+i\s+will\s+perform\s+is", re.IGNORECASE
)
_ACTION_LABEL_RE = re.compile(r"\bAction(?:\*\*)?\s*:")
_THOUGHT_LABEL_RE = re.compile(r"(?:\*\*)?Thought(?:\*\*)?\s*:(?:\*\*)?\s*")
_STEP_BY_STEP_RE = re.compile(r"let['’]?s\s+think\s+step[\s-]*by[\s-]*step\s*[.:!]?\s*", re.I)
# Verb-then-bracket at the start of a one-line response: worth reporting its own parse error.
_LOOKS_LIKE_ACTION_RE = re.compile(r"[A-Za-z_]+\s*[\[(]")
# Decoration between a marker and its action, and around an un-fenced action.
_LEADING_NOISE = " \t\r\n*_:>-\"'“”‘’"
_TRAILING_NOISE = " \t\r\n*_\"'“”‘’.,;:!"
_MARKDOWN_NOISE = " \t\r\n*_"
_T = TypeVar("_T")
# Attempts are bounded so a pathological response costs a few parses, not one per bracket.
_MAX_ATTEMPTS = 8


def extract_action(text: str) -> Action:
    """The action a whole model response commits to (see the module docstring for where).

    Raises :class:`ActionParseError` when there is none: the parse error of the action text when
    one was located, else ``no_answer_phrase``, ``no_action``, ``unclosed_fence`` or
    ``ambiguous_action``.
    """
    return extract_thought_and_action(text)[1]


def extract_thought(text: str) -> str:
    """The reasoning before the action, without the "Let's think step-by-step." opener.

    Never fails on a str: a response with no recoverable action is all reasoning. A leading
    ``Thought:`` label and markdown around the reasoning are dropped.
    """
    _require_text(text)
    return _clean_thought(text[: _locate(text)[0]])


def extract_thought_and_action(text: str) -> tuple[str, Action]:
    """``(extract_thought(text), extract_action(text))`` in one pass, for training records."""
    _require_text(text)
    end, found = _locate(text)
    if isinstance(found, ActionParseError):
        raise found
    return _clean_thought(text[:end]), found


def format_response(thought: str, action: Action) -> str:
    """The canonical policy response for ``action``: what SFT targets should look like."""
    return f"Let's think step-by-step. {thought.strip()} {ANSWER_PHRASE} {_FENCE}{action}{_FENCE}"


def _locate(text: str) -> tuple[int, Action | ActionParseError]:
    """Where the reasoning ends, and the action (or why there is none). Never raises."""
    phrase = _last_match(_ANSWER_PHRASE_RE, text)
    if phrase is not None:
        return phrase.start(), _attempt(_action_after_marker, text[phrase.end() :])
    stripped = text.strip()
    bare_error: ActionParseError | None = None
    if stripped and "\n" not in stripped:
        bare = _attempt(parse_action, stripped.rstrip(_TRAILING_NOISE))
        if isinstance(bare, Action):
            return 0, bare
        if _LOOKS_LIKE_ACTION_RE.match(stripped):
            bare_error = bare
    label = _last_match(_ACTION_LABEL_RE, text)
    if label is not None:
        return label.start(), _attempt(_action_after_marker, text[label.end() :])
    block = _lone_action_block(text)
    if block is not None:
        return block
    return len(text), bare_error or ActionParseError(
        Reason.NO_ANSWER_PHRASE, f"no {ANSWER_PHRASE!r}, no 'Action:' and no lone action block"
    )


def _require_text(text: object) -> None:
    if not isinstance(text, str):
        raise ActionParseError(Reason.NOT_TEXT, f"expected a str, got {type(text).__name__}")


def _action_after_marker(rest: str) -> Action:
    rest = rest.lstrip(_LEADING_NOISE)
    if not rest:
        raise ActionParseError(Reason.NO_ACTION, "nothing after the answer phrase")
    if rest.startswith("`"):
        return _fenced(rest)
    line = rest.split("\n", 1)[0]
    try:
        return _unfenced(line)
    except ActionParseError as unfenced_error:
        fence = rest.find(_FENCE)
        if fence < 0:
            raise
        followed = _attempt(_fenced, rest[fence:])
        if isinstance(followed, Action):
            return followed
        raise unfenced_error from None


def _fenced(text: str) -> Action:
    """The action in the code span or block that ``text`` starts with.

    The span closes at the first run of as many backticks as opened it whose content parses:
    typed text or an answer may itself hold backticks. A first line that is a lone word
    (```` ```text ````) is read as a language tag when the block does not parse with it.
    """
    width = len(text) - len(text.lstrip("`"))
    delimiter = text[:width]
    close = text.find(delimiter, width)
    if close < 0:
        raise ActionParseError(Reason.UNCLOSED_FENCE, "the action's code fence is never closed")
    found = _parse_block(text[width:close])
    attempts = 1
    while isinstance(found, ActionParseError) and attempts < _MAX_ATTEMPTS:
        close = text.find(delimiter, close + 1)
        if close < 0:
            break
        later = _parse_block(text[width:close])
        found = later if isinstance(later, Action) else found  # report the first error
        attempts += 1
    if isinstance(found, ActionParseError):
        raise found
    return found


def _parse_block(content: str) -> Action | ActionParseError:
    """Parse a code block's content; canonical actions never end in the punctuation dropped."""
    content = content.rstrip(_TRAILING_NOISE)
    found = _attempt(parse_action, content)
    if isinstance(found, Action):
        return found
    tag, newline, body = content.lstrip(" \t").partition("\n")
    if newline and tag.strip().isidentifier() and body.strip():
        without_tag = _attempt(parse_action, body)
        if isinstance(without_tag, Action):
            return without_tag
    return found


def _unfenced(line: str) -> Action:
    """An action written as plain text on one line, possibly followed by prose.

    The whole line is tried first; then prefixes ending at a ``]`` (longest first, so typed
    text and answers keep their inner brackets); then the first word (``go_back to ...``).
    """
    line = line.rstrip(_TRAILING_NOISE)
    try:
        return parse_action(line)
    except ActionParseError as whole_error:
        end = len(line)
        for _ in range(_MAX_ATTEMPTS):
            end = line.rfind("]", 0, end)
            if end < 0:
                break
            prefix = _attempt(parse_action, line[: end + 1])
            if isinstance(prefix, Action):
                return prefix
        words = line.split(maxsplit=1)
        first_word = _attempt(parse_action, words[0].rstrip(_TRAILING_NOISE) if words else "")
        if isinstance(first_word, Action):
            return first_word
        raise whole_error from None


def _lone_action_block(text: str) -> tuple[int, Action | ActionParseError] | None:
    """The single ``` block holding an action, if it is also the end of the response."""
    found: list[tuple[int, int, Action]] = []
    start = text.find(_FENCE)
    while start >= 0:
        close = text.find(_FENCE, start + len(_FENCE))
        if close < 0:
            break
        action = _parse_block(text[start + len(_FENCE) : close])
        if isinstance(action, Action):
            found.append((start, close + len(_FENCE), action))
        start = text.find(_FENCE, close + len(_FENCE))
    if not found:
        return None
    if len(found) > 1:
        shown = ", ".join(str(action) for _, _, action in found[:3])
        return len(text), ActionParseError(
            Reason.AMBIGUOUS_ACTION, f"no answer phrase and {len(found)} action blocks: {shown}"
        )
    start, end, action = found[0]
    if text[end:].strip(_TRAILING_NOISE):
        return None
    return start, action


def _clean_thought(thought: str) -> str:
    thought = thought.strip(_MARKDOWN_NOISE)
    label = _THOUGHT_LABEL_RE.match(thought)
    if label:
        thought = thought[label.end() :]
    opener = _STEP_BY_STEP_RE.match(thought)
    if opener:
        thought = thought[opener.end() :]
    return thought.strip(_MARKDOWN_NOISE)


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _attempt(parser: Callable[[str], _T], text: str) -> _T | ActionParseError:
    """Run ``parser``, returning its ActionParseError instead of raising: fallbacks compare."""
    try:
        return parser(text)
    except ActionParseError as error:
        return error
