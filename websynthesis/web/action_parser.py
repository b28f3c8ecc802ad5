"""Parsing one action string into an :class:`~websynthesis.web.action_space.Action`.

The grammar is WebArena's (``browser_env/actions.py``) plus BrowserGym's ``select_option``
and the tolerances :func:`parse_action` lists; every failure is an
:class:`~websynthesis.web.action_space.ActionParseError` with a typed
:class:`~websynthesis.web.action_space.Reason`. What a parsed action means (its canonical
fields, validation against a page, BrowserGym calls) is :mod:`websynthesis.web.action_space`'s;
reading an action out of a whole model response is :mod:`websynthesis.web.actions`'.
"""

from __future__ import annotations

import re

from websynthesis.web.action_space import (
    _BARE_KINDS,
    Action,
    ActionKind,
    ActionParseError,
    Reason,
    _show,
)

# "(...)" may stand for "[...]" only where the argument can never itself contain parentheses:
# ids, directions, tab indices and key names. Typed text, URLs and answers can, so there the
# form is refused rather than guessed at.
_PAREN_KINDS = _BARE_KINDS | {
    ActionKind.CLICK,
    ActionKind.HOVER,
    ActionKind.SCROLL,
    ActionKind.TAB_FOCUS,
    ActionKind.PRESS,
}
# WebEvolver's prompt spells go_back as "goback".
_VERBS: dict[str, ActionKind] = {kind.value: kind for kind in ActionKind} | {
    "goback": ActionKind.GO_BACK
}
_VERB_RE = re.compile(r"[A-Za-z_]+")
_DIRECTION_PREFIX_RE = re.compile(r"direction\s*=\s*", re.IGNORECASE)
# The enter flag of ``type``: a bare integer, or WebEvolver's ``press_enter_after=<v>``.
_FLAG_RE = re.compile(r"press_enter_after\s*=\s*(?P<named>.*)|(?P<bare>-?[0-9]+)", re.IGNORECASE)


def parse_action(s: str) -> Action:
    """Parse one action string (not a whole model response: see ``extract_action``).

    Tolerated: surrounding whitespace; any case of the verb; ``goback`` (WebEvolver); no space
    before ``[``; whitespace inside brackets; a missing ``type`` flag (means ``[1]``, WebArena's
    default); ``[press_enter_after=0|1]``; ``scroll [direction=down]`` and bare ``scroll down``
    (WebArena's own regex accepts the latter); ``Control + a``; ``[]`` or ``()`` after a verb
    without argument, ``stop`` and ``stop []`` (empty answer); ``(...)`` instead of ``[...]`` for
    click, hover, scroll, tab_focus, press and the argument-less verbs. Typed text, answers and
    URLs take everything up to the last ``]`` (the type flag is read from the end first), so
    ``type [12] [a [b] c] [1]`` types ``a [b] c``.

    Raises :class:`ActionParseError` (never anything else) with a :class:`Reason` otherwise.
    """
    if not isinstance(s, str):
        raise ActionParseError(Reason.NOT_TEXT, f"expected a str, got {type(s).__name__}")
    s = s.strip()
    if not s:
        raise ActionParseError(Reason.EMPTY, "empty action")
    match = _VERB_RE.match(s)
    kind = _VERBS.get(match.group().casefold()) if match else None
    if match is None or kind is None:
        raise ActionParseError(Reason.UNKNOWN_VERB, f"unknown action verb in {_show(s)}")
    rest = s[match.end() :].lstrip()
    if rest.startswith("("):
        if kind not in _PAREN_KINDS:
            raise ActionParseError(
                Reason.BAD_BRACKETS, f"{kind} takes [...], not (...): {_show(s)}"
            )
        if not rest.endswith(")"):
            raise ActionParseError(Reason.BAD_BRACKETS, f"unclosed '(' in {_show(s)}")
        rest = f"[{rest[1:-1]}]"
    return _PARSERS[kind](kind, rest)


# --- per-kind argument parsers -------------------------------------------------------------


def _parse_bare(kind: ActionKind, rest: str) -> Action:
    if rest and not (rest.startswith("[") and rest.endswith("]") and not rest[1:-1].strip()):
        raise ActionParseError(
            Reason.UNEXPECTED_ARGUMENT, f"{kind} takes no argument, got {_show(rest)}"
        )
    return Action(kind)


def _parse_element(kind: ActionKind, rest: str) -> Action:
    return Action(kind, target=_single_argument(kind, rest, Reason.MISSING_TARGET))


def _parse_tab_focus(kind: ActionKind, rest: str) -> Action:
    return Action(kind, target=_single_argument(kind, rest, Reason.BAD_TAB_INDEX))


def _parse_press(kind: ActionKind, rest: str) -> Action:
    return Action(kind, text=_single_argument(kind, rest, Reason.BAD_KEYS))


def _parse_scroll(kind: ActionKind, rest: str) -> Action:
    # "scroll down" (no brackets) is unambiguous: the direction is a closed vocabulary.
    bracketed = rest.startswith("[")
    direction = _single_argument(kind, rest, Reason.BAD_DIRECTION) if bracketed else rest
    prefix = _DIRECTION_PREFIX_RE.match(direction)
    return Action(kind, text=direction[prefix.end() :] if prefix else direction)


def _parse_goto(kind: ActionKind, rest: str) -> Action:
    if not rest:
        raise ActionParseError(Reason.MISSING_URL, "goto needs [url]")
    return Action(kind, text=_greedy_argument(kind, rest))


def _parse_stop(kind: ActionKind, rest: str) -> Action:
    return Action(kind, text=_greedy_argument(kind, rest) if rest else "")


def _parse_select(kind: ActionKind, rest: str) -> Action:
    if not rest:
        raise ActionParseError(Reason.MISSING_TARGET, "select_option needs [id] [option]")
    target, after = _leading_group(kind, rest)
    if not target:
        raise ActionParseError(Reason.MISSING_TARGET, f"empty id in select_option {_show(rest)}")
    if not after:
        raise ActionParseError(Reason.MISSING_TEXT, f"select_option [{target}] has no [option]")
    return Action(kind, target=target, text=_greedy_argument(kind, after))


def _parse_type(kind: ActionKind, rest: str) -> Action:
    if not rest:
        raise ActionParseError(Reason.MISSING_TARGET, "type needs [id] [text] [0|1]")
    target, after = _leading_group(kind, rest)
    if not target:
        raise ActionParseError(Reason.MISSING_TARGET, f"empty id in type {_show(rest)}")
    if not after:
        raise ActionParseError(Reason.MISSING_TEXT, f"type [{target}] has no [text]")
    groups = _greedy_argument(kind, after, strip=False)  # "text] [flag" or "text"
    text, press_enter = _split_flag(groups)
    return Action(kind, target=target, text=text, press_enter=press_enter)


_PARSERS = {
    ActionKind.CLICK: _parse_element,
    ActionKind.HOVER: _parse_element,
    ActionKind.TYPE: _parse_type,
    ActionKind.SELECT_OPTION: _parse_select,
    ActionKind.PRESS: _parse_press,
    ActionKind.SCROLL: _parse_scroll,
    ActionKind.GOTO: _parse_goto,
    ActionKind.TAB_FOCUS: _parse_tab_focus,
    ActionKind.STOP: _parse_stop,
} | dict.fromkeys(_BARE_KINDS, _parse_bare)


def _leading_group(kind: ActionKind, rest: str) -> tuple[str, str]:
    """Split ``[inner] tail`` into the stripped inner text and the stripped tail."""
    if not rest.startswith("["):
        raise ActionParseError(
            Reason.MISSING_BRACKETS, f"{kind} arguments go in [...]: {_show(rest)}"
        )
    close = rest.find("]")
    if close < 0 or "[" in rest[1:close]:
        raise ActionParseError(Reason.BAD_BRACKETS, f"unbalanced brackets in {kind} {_show(rest)}")
    return rest[1:close].strip(), rest[close + 1 :].strip()


def _single_argument(kind: ActionKind, rest: str, missing: Reason) -> str:
    """The one bracketed argument of ``kind``; ``missing`` is the reason when there is none."""
    if not rest:
        raise ActionParseError(missing, f"{kind} needs an argument in [...]")
    inner, tail = _leading_group(kind, rest)
    if tail:
        raise ActionParseError(
            Reason.TRAILING_TEXT, f"unexpected {_show(tail)} after {kind} [{inner}]"
        )
    if not inner:
        raise ActionParseError(missing, f"{kind} has an empty argument")
    return inner


def _greedy_argument(kind: ActionKind, rest: str, *, strip: bool = True) -> str:
    """Everything between the first ``[`` and the last ``]``: free text may contain brackets."""
    if not rest.startswith("["):
        raise ActionParseError(
            Reason.MISSING_BRACKETS, f"{kind} arguments go in [...]: {_show(rest)}"
        )
    if not rest.endswith("]"):
        last = rest.rfind("]")
        if last < 0 or "[" in rest[last:]:
            raise ActionParseError(Reason.BAD_BRACKETS, f"unclosed '[' in {kind} {_show(rest)}")
        raise ActionParseError(
            Reason.TRAILING_TEXT, f"unexpected {_show(rest[last + 1 :])} after {kind}"
        )
    inner = rest[1:-1]
    return inner.strip() if strip else inner


def _split_flag(groups: str) -> tuple[str, bool]:
    """Read ``text] [flag`` from the end: the last group is the flag only if it looks like one.

    Reading from the end lets the text contain brackets; a last group that is neither an
    integer nor ``press_enter_after=`` is part of the text and Enter takes its default (on).
    """
    open_ = groups.rfind("[")
    if open_ <= 0:
        return groups, True
    head = groups[:open_].rstrip()
    flag = _FLAG_RE.fullmatch(groups[open_ + 1 :].strip())
    if not head.endswith("]") or flag is None:
        return groups, True
    value = (flag.group("bare") or flag.group("named")).strip()
    if value not in ("0", "1"):
        raise ActionParseError(Reason.BAD_FLAG, f"type flag must be 0 or 1, got {_show(value)}")
    return head[:-1], value == "1"
