"""The id-based action space: one immutable :class:`Action` type and its grammar.

Why this module exists: the reference code never parsed actions. It tested raw model output with
substrings (``'stop' in text``, ``'type' in text``), so reasoning such as "before I stop", the URL
``onestopmarket.com`` or ``type [5] [stop sign]`` counted as a stop, ended searches early and
spliced valid steps out of the SFT data (audit B1, B2, D2). Here a string is parsed exactly once,
by :func:`~websynthesis.web.action_parser.parse_action`, into an :class:`Action`; everything
downstream (terminal detection, dedup, world-model input, BrowserGym execution, training data)
reads its fields.

Grammar (WebArena ``browser_env/actions.py`` plus the tolerances listed in
:func:`~websynthesis.web.action_parser.parse_action`)::

    click [id]   hover [id]   type [id] [text] [0|1]   press [keys]   scroll [up|down]
    goto [url]   go_back   go_forward   new_tab   tab_focus [n]   close_tab   stop [answer]
    select_option [id] [option]

The last is BrowserGym's ``select_option``: a ``<select>`` takes its option directly, not by
keyboard. It is not one of WebArena's twelve; which verbs an environment's pages take is that
environment's declared action set (:mod:`websynthesis.web.action_sets`).

Every field is canonicalised when an :class:`Action` is built, so two actions that mean the same
thing to the browser compare equal and ``parse_action(a.to_string()) == a`` for every action.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit


class ActionKind(StrEnum):
    """The verbs of the WebArena id-based grammar; the value is the canonical verb."""

    CLICK = "click"
    HOVER = "hover"
    TYPE = "type"
    PRESS = "press"
    SCROLL = "scroll"
    GOTO = "goto"
    GO_BACK = "go_back"
    GO_FORWARD = "go_forward"
    NEW_TAB = "new_tab"
    TAB_FOCUS = "tab_focus"
    CLOSE_TAB = "close_tab"
    STOP = "stop"
    SELECT_OPTION = "select_option"


class Reason(StrEnum):
    """Machine-readable codes carried by :class:`ActionParseError` and :class:`ValidationResult`.

    They are strings (``Reason.BAD_FLAG == "bad_flag"``) so callers can count and log them, and so
    a policy re-prompt can say precisely what was wrong instead of silently resampling (B10).
    """

    # parse_action
    NOT_TEXT = "not_text"  # the input is not a str
    EMPTY = "empty"  # nothing but whitespace
    UNKNOWN_VERB = "unknown_verb"  # e.g. wait, fill, a word from prose
    MISSING_BRACKETS = "missing_brackets"  # click 12, stop N/A
    BAD_BRACKETS = "bad_brackets"  # unclosed or nested brackets, () where text may hold ()
    TRAILING_TEXT = "trailing_text"  # click [12] and more words
    UNEXPECTED_ARGUMENT = "unexpected_argument"  # go_back [3], or a field the kind does not have
    MISSING_TARGET = "missing_target"  # click, click []
    BAD_TARGET = "bad_target"  # click [Submit]: ids hold digits
    MISSING_TEXT = "missing_text"  # type [12], type [12] [] [1], select_option [5]
    BAD_FLAG = "bad_flag"  # type [12] [x] [2]
    BAD_KEYS = "bad_keys"  # press [], press [Control a]
    BAD_DIRECTION = "bad_direction"  # scroll [left], scroll
    MISSING_URL = "missing_url"  # goto, goto []
    BAD_TAB_INDEX = "bad_tab_index"  # tab_focus [first], tab_focus [-1]
    # extract_action (whole model responses)
    NO_ANSWER_PHRASE = "no_answer_phrase"  # no answer phrase, Action: label or lone action block
    NO_ACTION = "no_action"  # an answer phrase followed by nothing
    UNCLOSED_FENCE = "unclosed_fence"  # ```click [12]  (truncated response)
    AMBIGUOUS_ACTION = "ambiguous_action"  # no answer phrase and several action blocks
    # Action.validate (against an observation)
    UNKNOWN_ID = "unknown_id"  # the element is not in the tree
    NOT_TYPEABLE = "not_typeable"  # type into a link, a button, ...
    BAD_URL = "bad_url"  # goto needs an absolute http(s) URL without whitespace
    NOT_SELECTABLE = "not_selectable"  # select_option on a button, a link, ...
    UNKNOWN_OPTION = "unknown_option"  # select_option [5] [Kiwi] where [5] lists no Kiwi
    # against the environment's declared action set (websynthesis.web.action_sets)
    UNDECLARED_ACTION = "undeclared_action"  # e.g. goto on MiniWoB++, select_option on WebArena


class ActionParseError(ValueError):
    """An action string, a model response or an Action's fields do not form a valid action.

    ``reason`` is a :class:`Reason`; ``message`` says what was seen, for logs and re-prompts.
    The constructor arguments are kept as ``args`` so the error pickles across worker processes.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


# The kinds that name an element of the page in ``target``.
ELEMENT_KINDS = frozenset(
    {ActionKind.CLICK, ActionKind.HOVER, ActionKind.TYPE, ActionKind.SELECT_OPTION}
)
_BARE_KINDS = frozenset(
    {ActionKind.GO_BACK, ActionKind.GO_FORWARD, ActionKind.NEW_TAB, ActionKind.CLOSE_TAB}
)
_DIRECTIONS = frozenset({"up", "down"})

# WebArena ids are CDP node ids ("164"); BrowserGym bids carry a letter frame prefix ("a51").
# Requiring a digit is what rejects words an LLM puts where the id belongs ("click [Submit]").
_ID_RE = re.compile(r"[A-Za-z]*[0-9]+")
_TAB_INDEX_RE = re.compile(r"[0-9]+")
_KEYS_RE = re.compile(r"[^\s\[\]]+")
_KEY_JOIN_RE = re.compile(r"\s*\+\s*")
# The keys ``press`` takes, as Playwright names them (``keyboard.press``, which BrowserGym's
# ``keyboard_press`` calls): modifiers, named keys, and one printable ASCII character (the US
# layout Playwright types with has no "é").
# A made-up name ("press [submitform]") is refused by the browser, so it is no action.
KEY_NAMES = (
    "Control", "Shift", "Alt", "Meta", "ControlOrMeta",
    "Enter", "Tab", "Escape", "Backspace", "Delete", "Insert", "Space",
    "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown",
    *(f"F{n}" for n in range(1, 13)),
)  # fmt: skip
_KEY_BY_NAME = {name.casefold(): name for name in KEY_NAMES}
_SPACE_RE = re.compile(r"\s+")

# The pixel step of a BrowserGym scroll. WebArena scrolls one viewport (720 px at its 1280x720
# default); 500 px keeps an overlap so no line of text falls between two observations.
BROWSERGYM_SCROLL_PX = 500


class AXNodeLike(Protocol):
    """What validation reads from an observation node (``websynthesis.web.observation.AXNode``)."""

    @property
    def role(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def children(self) -> Sequence[AXNodeLike]: ...


class AXTreeLike(Protocol):
    """What validation reads from an observation (``websynthesis.web.observation.AXTree``)."""

    def get(self, node_id: str) -> AXNodeLike | None: ...


# Roles that accept typed text (compared case-folded). Chrome exposes <input>, <textarea> and
# contenteditable as "textbox", search inputs as "searchbox", autocompletes and <select> as
# "combobox" and number inputs as "spinbutton" (the four text-entry roles found in the WebArena
# start pages); date inputs as "Date", time inputs as "InputTime", datetime-local, month and
# week inputs as "DateTime": these take text in the browser's value format (``2012-02-04``,
# ``13:05``, ``2012-02-04T13:05``, ``2012-02``, ``2012-W05``); Playwright's ``fill``, which
# BrowserGym's ``fill`` calls, refuses any other as a malformed value.
TYPEABLE_ROLES = frozenset(
    {"textbox", "searchbox", "combobox", "spinbutton", "date", "inputtime", "datetime"}
)
# Roles whose options select_option can choose: Chrome exposes <select> as "combobox"
# (a drop-down) or "listbox" (with ``size`` or ``multiple``), its <option>s as "option".
SELECTABLE_ROLES = frozenset({"combobox", "listbox"})


def listed_options(node: AXNodeLike) -> list[str]:
    """The names of the options an observation lists under ``node`` (any depth: Chrome puts
    a drop-down's options under a ``MenuListPopup``), in page order; ``[]`` when none are shown.
    """
    found: list[str] = []
    stack = list(reversed(node.children))
    while stack:
        child = stack.pop()
        if child.role.casefold() == "option":
            found.append(child.name)
        else:
            stack.extend(reversed(child.children))
    return found


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Whether an action can run on an observation; ``reason`` is a :class:`Reason` when not."""

    ok: bool
    reason: str = ""
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok


_VALID = ValidationResult(True)


@dataclass(frozen=True, slots=True)
class Action:
    """One WebArena action, canonicalised on construction.

    Fields by kind (all others are ``None``/``False``, anything else raises
    :class:`ActionParseError`):

    - click, hover: ``target`` = element id (digits with an optional letter frame prefix).
    - type: ``target`` = element id, ``text`` = the text, ``press_enter`` = the ``[1]`` flag.
      The grammar's default for a missing flag (Enter) is applied by the parser, not here.
    - select_option: ``target`` = the ``<select>``'s id, ``text`` = the option's label.
    - press: ``text`` = key combination, e.g. ``Control+a`` (spaces around ``+`` are dropped).
    - scroll: ``text`` = ``"up"`` or ``"down"``.
    - goto: ``text`` = URL (checked by :meth:`validate`, since only a page can refuse it).
    - tab_focus: ``target`` = the tab index as a decimal string ("1"); it names what the action
      acts on, like an element id, so it lives in ``target``.
    - stop: ``text`` = the answer; ``""`` for none (``None`` is accepted and becomes ``""``),
      ``"N/A"`` for infeasible. An empty answer stays empty: WebArena's program_html tasks end
      with a bare ``stop``, which the reference wrongly rewrote to ``N/A``.

    Surrounding whitespace is stripped from every string field.
    """

    kind: ActionKind
    target: str | None = None
    text: str | None = None
    press_enter: bool = False

    def __post_init__(self) -> None:
        kind = _coerce_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "target", _canonical_target(kind, self.target))
        object.__setattr__(self, "text", _canonical_text(kind, self.text))
        if not isinstance(self.press_enter, bool):
            raise ActionParseError(
                Reason.BAD_FLAG, f"press_enter must be a bool, not {_show(self.press_enter)}"
            )
        if self.press_enter and kind is not ActionKind.TYPE:
            raise ActionParseError(
                Reason.BAD_FLAG, f"press_enter is only meaningful for type, not {kind}"
            )

    @property
    def is_infeasible(self) -> bool:
        """``stop [N/A]``: the policy declares the task unachievable (WebArena's convention)."""
        return self.kind is ActionKind.STOP and (self.text or "").casefold() == "n/a"

    def to_string(self) -> str:
        """The canonical WebArena form, e.g. ``type [164] [restaurants near CMU] [1]``."""
        kind = self.kind
        if kind in _BARE_KINDS:
            return kind.value
        if kind is ActionKind.TYPE:
            return f"type [{self.target}] [{self.text}] [{int(self.press_enter)}]"
        if kind is ActionKind.SELECT_OPTION:
            return f"select_option [{self.target}] [{self.text}]"
        argument = self.target if self.target is not None else self.text
        return f"{kind.value} [{argument}]"

    __str__ = to_string

    def validate(self, tree: AXTreeLike) -> ValidationResult:
        """Whether this action can run on ``tree``; syntax was already checked at construction.

        Element actions need their id in the tree (``tree.get``; never a match on a node's name,
        which the reference did), and ``type`` needs a role from :data:`TYPEABLE_ROLES`;
        ``select_option`` needs one from :data:`SELECTABLE_ROLES` and, where the tree lists
        the element's options, one of their names (case and spacing aside).
        ``goto`` needs an absolute http(s) URL. Scroll directions and tab indices cannot be
        invalid on a built Action; WebArena observations do not list tabs, so a tab index beyond
        the open tabs is left for the browser to refuse.
        """
        if self.kind in ELEMENT_KINDS:
            node = tree.get(str(self.target))
            if node is None:
                return ValidationResult(
                    False, Reason.UNKNOWN_ID, f"no element [{self.target}] in the observation"
                )
            if self.kind is ActionKind.TYPE and node.role.casefold() not in TYPEABLE_ROLES:
                return ValidationResult(
                    False,
                    Reason.NOT_TYPEABLE,
                    f"[{self.target}] is a {node.role!r}, not a text field",
                )
            if self.kind is ActionKind.SELECT_OPTION:
                return _validate_option(node, str(self.target), self.text or "")
        elif self.kind is ActionKind.GOTO and not _is_http_url(self.text or ""):
            return ValidationResult(
                False, Reason.BAD_URL, f"not an absolute http(s) URL: {self.text!r}"
            )
        return _VALID

    def browsergym_calls(self) -> tuple[str, ...]:
        """This action as BrowserGym high-level calls, one string per call.

        Only ``type ... [1]`` needs two (``fill`` then ``press(bid, 'Enter')``); with a
        ``HighLevelActionSet(multiaction=False)`` run them as consecutive steps. Strings are
        quoted with ``repr``, which BrowserGym's parser reads back with ``ast.literal_eval``.
        Subsets needed: bid, nav, tab, chat, infeas, plus ``keyboard_press`` (coord subset or the
        "webarena" preset) for ``press``. Unlike WebArena's ``type``, ``fill`` replaces the
        field's content instead of appending to it.
        """
        q = repr
        match self.kind:
            case ActionKind.CLICK | ActionKind.HOVER:
                return (f"{self.kind.value}({q(self.target)})",)
            case ActionKind.TYPE:
                fill = f"fill({q(self.target)}, {q(self.text)})"
                return (fill, f"press({q(self.target)}, 'Enter')") if self.press_enter else (fill,)
            case ActionKind.SELECT_OPTION:
                return (f"select_option({q(self.target)}, {q(self.text)})",)
            case ActionKind.PRESS:
                return (f"keyboard_press({q(self.text)})",)
            case ActionKind.SCROLL:
                step = BROWSERGYM_SCROLL_PX if self.text == "down" else -BROWSERGYM_SCROLL_PX
                return (f"scroll(0, {step})",)
            case ActionKind.GOTO:
                return (f"goto({q(self.text)})",)
            case ActionKind.TAB_FOCUS:
                return (f"tab_focus({self.target})",)
            case ActionKind.CLOSE_TAB:
                return ("tab_close()",)
            case ActionKind.STOP:
                call = "report_infeasible" if self.is_infeasible else "send_msg_to_user"
                return (f"{call}({q(self.text)})",)
            case _:  # go_back, go_forward, new_tab share their BrowserGym name
                return (f"{self.kind.value}()",)

    def to_browsergym(self) -> str:
        """:meth:`browsergym_calls` joined by newlines: one BrowserGym step with multiaction on."""
        return "\n".join(self.browsergym_calls())


def _validate_option(node: AXNodeLike, target: str, option: str) -> ValidationResult:
    if node.role.casefold() not in SELECTABLE_ROLES:
        return ValidationResult(
            False, Reason.NOT_SELECTABLE, f"[{target}] is a {node.role!r}, not a list of options"
        )
    listed = listed_options(node)
    if listed and _collapse(option).casefold() not in {_collapse(o).casefold() for o in listed}:
        shown = ", ".join(repr(o) for o in listed[:8])
        return ValidationResult(
            False, Reason.UNKNOWN_OPTION, f"[{target}] has no option {option!r} (it lists {shown})"
        )
    return _VALID


def equivalence_key(action: Action) -> tuple[object, ...]:
    """A hashable key such that two actions are :func:`equivalent` iff their keys are equal.

    Lets search expansion dedup k samples with a set instead of k^2 comparisons. ``type``
    keeps the element id and the enter flag (the reference compared the text only, so typing
    the same query into two fields was a duplicate: B9); ``stop`` and ``goto`` compare
    normalised answers and URLs; every other kind compares its canonical fields.
    """
    kind = action.kind
    if kind is ActionKind.TYPE:
        return (kind, action.target, _collapse(action.text or ""), action.press_enter)
    if kind is ActionKind.SELECT_OPTION:
        return (kind, action.target, _collapse(action.text or "").casefold())
    if kind is ActionKind.STOP:
        return (kind, _normalise_answer(action.text or ""))
    if kind is ActionKind.GOTO:
        return (kind, _normalise_url(action.text or ""))
    return (kind, action.target, action.text)


def equivalent(a: Action, b: Action) -> bool:
    """Semantic equality for dedup during search expansion (see :func:`equivalence_key`)."""
    return equivalence_key(a) == equivalence_key(b)


# --- canonicalisation (shared by the parser and direct construction) ---------------------


def _coerce_kind(kind: object) -> ActionKind:
    if isinstance(kind, ActionKind):
        return kind
    try:
        return ActionKind(kind)
    except ValueError:
        raise ActionParseError(Reason.UNKNOWN_VERB, f"unknown action kind {_show(kind)}") from None


def _canonical_target(kind: ActionKind, target: object) -> str | None:
    if kind in ELEMENT_KINDS or kind is ActionKind.TAB_FOCUS:
        missing = Reason.BAD_TAB_INDEX if kind is ActionKind.TAB_FOCUS else Reason.MISSING_TARGET
        if not isinstance(target, str) or not target.strip():
            raise ActionParseError(missing, f"{kind} needs a target, got {_show(target)}")
        target = target.strip()
        if kind is ActionKind.TAB_FOCUS:
            if not _TAB_INDEX_RE.fullmatch(target):
                raise ActionParseError(
                    Reason.BAD_TAB_INDEX, f"tab index must be an integer >= 0, got {_show(target)}"
                )
            return target.lstrip("0") or "0"  # not int(): no digit-count limit to trip on
        if not _ID_RE.fullmatch(target):
            raise ActionParseError(Reason.BAD_TARGET, f"not an element id: {_show(target)}")
        return target
    if target is not None:
        raise ActionParseError(
            Reason.UNEXPECTED_ARGUMENT, f"{kind} takes no target, got {_show(target)}"
        )
    return None


def _canonical_text(kind: ActionKind, text: object) -> str | None:
    reason = _TEXT_REASONS.get(kind)
    if reason is None:
        if text is not None:
            raise ActionParseError(
                Reason.UNEXPECTED_ARGUMENT, f"{kind} takes no text, got {_show(text)}"
            )
        return None
    if kind is ActionKind.STOP and text is None:
        return ""
    if not isinstance(text, str):
        raise ActionParseError(reason, f"{kind} needs a str, got {_show(text)}")
    text = text.strip()
    if kind is ActionKind.STOP:
        return text
    if not text:
        raise ActionParseError(reason, f"{kind} has an empty argument")
    if kind is ActionKind.PRESS:
        text = _KEY_JOIN_RE.sub("+", text)
        if not _KEYS_RE.fullmatch(text):
            raise ActionParseError(reason, f"not a key combination: {_show(text)}")
        text = _key_combination(text, reason)
    elif kind is ActionKind.SCROLL:
        text = text.casefold()
        if text not in _DIRECTIONS:
            raise ActionParseError(
                reason, f"scroll direction must be up or down, got {_show(text)}"
            )
    return text


_TEXT_REASONS = {
    ActionKind.TYPE: Reason.MISSING_TEXT,
    ActionKind.SELECT_OPTION: Reason.MISSING_TEXT,
    ActionKind.PRESS: Reason.BAD_KEYS,
    ActionKind.SCROLL: Reason.BAD_DIRECTION,
    ActionKind.GOTO: Reason.MISSING_URL,
    ActionKind.STOP: Reason.MISSING_TEXT,
}


# --- helpers ----------------------------------------------------------------------------


def _key_combination(text: str, reason: Reason) -> str:
    """``text`` with each key's canonical name (``enter`` -> ``Enter``); a key that is
    neither a name of :data:`KEY_NAMES` nor one printable ASCII character raises
    :class:`ActionParseError`. A lone ``+`` is the plus key."""
    if text == "+":
        return text
    keys = []
    for key in text.split("+"):
        if len(key) == 1 and key.isascii() and key.isprintable():
            keys.append(key)
            continue
        name = _KEY_BY_NAME.get(key.casefold())
        if name is None:
            raise ActionParseError(reason, f"not a key: {_show(key)} (in {_show(text)})")
        keys.append(name)
    return "+".join(keys)


def _collapse(text: str) -> str:
    return _SPACE_RE.sub(" ", text).strip()


def _normalise_answer(answer: str) -> str:
    """Case, inner whitespace and a final full stop do not change an answer."""
    return _collapse(answer.casefold()).rstrip(".").rstrip()


def _normalise_url(url: str) -> str:
    """Scheme and host are case-insensitive; a trailing slash on the path is not significant."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: compare the raw text
        return url
    return urlunsplit(
        (
            parts.scheme.lower(),
            parts.netloc.lower(),
            parts.path.rstrip("/"),
            parts.query,
            parts.fragment,
        )
    )


def _is_http_url(url: str) -> bool:
    if not url or any(ch.isspace() for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _show(value: object, limit: int = 60) -> str:
    """A short repr for messages: actions can carry whole paragraphs of typed text."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
