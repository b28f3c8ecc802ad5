"""The roles' output grammars: what each role may write, as EBNF for xgrammar.

Why: an action the parser cannot read, or an element id not on the page, is a
wasted expansion (and with a small or freshly trained policy, most of them are).
With the grammar enforced at decoding time every response parses, and its ids
come from the observation.

Grammars are EBNF strings in the GBNF dialect that xgrammar (used by vLLM and
SGLang too) reads, so the same string constrains this process's local backend
(:mod:`websynthesis.backends.constraints` compiles and enforces it) and a remote server.

**Finishing within the token budget.** A grammar is free text followed by a
short structured answer; a model that never ends its free text would be cut
off by ``max_new_tokens`` before the answer. So a grammar may carry a
*wrap-up* line, a comment other readers ignore::

    # wrap-up: answer within 120 tokens

meaning "rule ``answer`` can be completed from its start in at most 120
tokens" (the enforcing side: :mod:`websynthesis.backends.constraints`). The
builders below bound every free field of an answer and keep it ASCII, where one
token is at least one byte, so the count is a true worst case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from functools import cache

from websynthesis.web.action_sets import WEBARENA_ACTIONS
from websynthesis.web.actions import ANSWER_PHRASE, KEY_NAMES, ActionKind

FENCE = "```"
# Tokens that may be spent finishing a multi-byte character before the answer can start.
_UTF8_SLACK = 3
# Printable ASCII without space, brackets and backtick: what ids, keys and URLs are made of.
_WORD_CHAR = r"[!-Z\\^_a-~]"
_TEXT_CHAR = r"[ !-Z\\^_a-~]"  # the same plus space: typed text and answers
_MAX_KEYS = 3  # press [Control+Shift+ArrowDown]
_MAX_KEY_CHARS = max(len(name) for name in KEY_NAMES)


# --- grammar builders ---------------------------------------------------------------------


def action_grammar(
    ids: Sequence[str],
    *,
    allow_reasoning: bool = True,
    max_text_chars: int = 200,
    typeable_ids: Sequence[str] | None = None,
    goto_prefixes: Sequence[str] | None = None,
    kinds: Collection[ActionKind] | None = None,
    options: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A policy response: reasoning, the answer phrase, and one fenced action.

    ``kinds`` is the environment's declared action set (default: WebArena's twelve, see
    :mod:`websynthesis.web.action_sets`); no other verb can be written. Element actions
    (click, hover) may only name ``ids``; ``type`` only ``typeable_ids`` (default: all of
    ``ids``), so a constrained policy cannot type into a button; ``select_option`` only the
    ids of ``options`` (a ``<select>``'s id -> the option names the page lists; an empty
    list allows any option text). ``goto`` URLs must start with one of ``goto_prefixes``
    when given (an empty list forbids ``goto``). Typed text, ``stop`` answers and
    URLs are at most ``max_text_chars`` printable ASCII characters without
    ``[``, ``]`` or a backtick; reasoning is anything without a backtick (so the
    fence is unambiguous). With no ``ids`` only non-element actions remain.
    """
    allowed = WEBARENA_ACTIONS if kinds is None else frozenset(kinds)
    typeable = list(ids) if typeable_ids is None else [i for i in typeable_ids if i in set(ids)]
    typeable = typeable if ActionKind.TYPE in allowed else []
    selects = {
        sid: [o for o in names if _writable_option(o)]
        for sid, names in (options or {}).items()
        if sid in set(ids) and ActionKind.SELECT_OPTION in allowed
    }
    id_bytes = max((len(i.encode()) for i in ids), default=0)
    option_bytes = max(
        (len(o.encode()) for names in selects.values() for o in names), default=max_text_chars
    )
    longest_action = max(
        len("hover [") + id_bytes + len("]"),
        len("type [") + id_bytes + len("] [") + max_text_chars + len("] [0]"),
        len("select_option [") + id_bytes + len("] [") + max(option_bytes, max_text_chars) + 1,
        len("goto [")
        + max((len(p) for p in goto_prefixes or ()), default=len("https://"))
        + max_text_chars
        + len("]"),
        len("stop [") + max_text_chars + len("]"),
        len("press [") + _MAX_KEYS * (_MAX_KEY_CHARS + 1) - 1 + len("]"),
        len("tab_focus [99]"),
        len("go_forward"),
    )
    answer_bytes = len(f"{ANSWER_PHRASE} {FENCE}") + longest_action + len(FENCE)
    if goto_prefixes is None:
        goto = '"goto [http" "s"? "://" url "]"'
    else:
        goto = f'"goto [" ({" | ".join(_literal(p) for p in goto_prefixes)}) url? "]"'
    offered: list[tuple[ActionKind, str | None]] = [
        (ActionKind.CLICK, '"click [" id "]"' if ids else None),
        (ActionKind.HOVER, '"hover [" id "]"' if ids else None),
        (ActionKind.TYPE, '"type [" tid "] [" text "] [" [01] "]"' if typeable else None),
        (ActionKind.SELECT_OPTION, _select_rule(selects) if selects else None),
        (ActionKind.PRESS, f'"press [" key ("+" key){{0,{_MAX_KEYS - 1}}} "]"'),
        (ActionKind.SCROLL, '"scroll [" ("up" | "down") "]"'),
        (ActionKind.GOTO, goto if goto_prefixes is None or goto_prefixes else None),
        (ActionKind.GO_BACK, '"go_back"'),
        (ActionKind.GO_FORWARD, '"go_forward"'),
        (ActionKind.NEW_TAB, '"new_tab"'),
        (ActionKind.TAB_FOCUS, '"tab_focus [" [0-9] [0-9]? "]"'),
        (ActionKind.CLOSE_TAB, '"close_tab"'),
        (ActionKind.STOP, '"stop [" text? "]"'),
    ]
    actions = [rule for kind, rule in offered if rule is not None and kind in allowed]
    if not actions:
        actions = ['"stop [" text? "]"']  # a page offering none of the set: the policy can end
    rules = [
        _wrap_up_line("answer", answer_bytes),
        "root ::= reasoning answer" if allow_reasoning else "root ::= answer",
        "reasoning ::= [^`]*",
        f"answer ::= {_literal(f'{ANSWER_PHRASE} {FENCE}')} action {_literal(FENCE)}",
        "action ::= " + " | ".join(actions),
        "key ::= [a-z0-9] | " + " | ".join(_literal(name) for name in KEY_NAMES),
        f"url ::= {_WORD_CHAR}{{1,{max_text_chars}}}",
        # Starts with a non-space, so it is never blank once stripped.
        f"text ::= {_WORD_CHAR} {_TEXT_CHAR}{{0,{max_text_chars - 1}}}",
    ]
    if ids:
        rules.append("id ::= " + " | ".join(_literal(i) for i in dict.fromkeys(ids)))
    if typeable:
        rules.append("tid ::= " + " | ".join(_literal(i) for i in dict.fromkeys(typeable)))
    return "\n".join(rules) + "\n"


def _writable_option(name: str) -> bool:
    """An option name the answer can carry: non-blank, one line, no backtick (the fence)."""
    return bool(name.strip()) and name == name.strip() and not re.search(r"[`\n\r]", name)


def _select_rule(selects: Mapping[str, Sequence[str]]) -> str:
    """``select_option [id] [option]``: each list's own options, or any text where the page
    shows none."""
    choices = []
    for sid, names in selects.items():
        option = " | ".join(_literal(o) for o in dict.fromkeys(names)) if names else "text"
        choices.append(f'"select_option [" {_literal(sid)} "] [" ({option}) "]"')
    return "(" + " | ".join(choices) + ")"


def go_back_grammar() -> str:
    """A reflection: free reasoning, then the answer phrase and ```go_back```."""
    answer = f"{ANSWER_PHRASE} {FENCE}go_back{FENCE}"
    return (
        "\n".join(
            [
                _wrap_up_line("answer", len(answer)),
                "root ::= reasoning answer",
                # A reflection must say why: a reason that starts with a visible character.
                "reasoning ::= [^` \\t\\r\\n] [^`]*",
                f"answer ::= {_literal(answer)}",
            ]
        )
        + "\n"
    )


def score_grammar(low: int = 1, high: int = 5) -> str:
    """``Reason: <one line>\\nScore: <integer in [low, high]>`` for the reward role."""
    if low > high:
        raise ValueError(f"empty score range [{low}, {high}]")
    return _reason_then_score(" | ".join(_literal(str(s)) for s in range(low, high + 1)))


def judge_grammar() -> str:
    """``Reason: <one line>\\nScore: 0|0.5|1`` for the success judge."""
    return _reason_then_score('"0.5" | "0" | "1"')


FRESH_ID_CHARS = 10  # the longest id the ``fresh`` rule writes (T + 2 letters + a12345)


def a11y_grammar(
    ids: Sequence[str] = (), *, max_depth: int = 8, max_name_chars: int = 48, max_props: int = 2
) -> str:
    """The world model's answer: ``<a11y>``, a structurally valid WebArena tree, ``</a11y>``.

    Every line is ``[id] role 'name' prop: value …`` at a depth at most one deeper than the
    line before (one rule per depth makes the nesting context-free), the first line is the
    root at depth 0, ids are the current page's ``ids`` or fresh ones, names are quoted
    as ``repr`` would quote them. So a constrained prediction always parses with no
    structural error but possible duplicate ids (a grammar cannot count), whatever model
    writes it; the wrap-up closes the tree after any complete line when the budget runs out.
    The price is fidelity: names, props and depth are capped, so it suits small or untrained
    world models (``model=tiny``); a trained 7B world model is best left unconstrained.
    """
    rules = [
        'root ::= "<a11y>\\n" d0 close',
        'close ::= "\\n</a11y>"',
        *(
            f'd{depth} ::= {_literal(chr(9) * depth)} line ("\\n" d{depth + 1})*'
            for depth in range(1, max_depth)
        ),
        'd0 ::= line ("\\n" d1)*',
        f"d{max_depth} ::= {_literal(chr(9) * max_depth)} line",
        f'line ::= "[" id "] " role " " name (" " prop){{0,{max_props}}}',
        "role ::= [A-Za-z] [A-Za-z0-9]{0,23}",
        f'name ::= "\'" [^\'\\n\\\\]{{0,{max_name_chars}}} "\'"'
        f' | "\\"" [^"\\n\\\\]{{0,{max_name_chars}}} "\\""',
        'prop ::= [a-z] [A-Za-z]{0,15} ": " [A-Za-z0-9_.-]{1,24}',
        # A new element's id: a number (a bid, WebArena's DOM ids) or a text line's id as
        # websynthesis.env.observe gives it ("T" + letters + its element's bid: TB12).
        'fresh ::= [1-9] [0-9]{0,4} | "T" [A-Z]{1,2} [a-z]{0,2} [0-9]{1,5}',
        "id ::= fresh" + "".join(f" | {_literal(i)}" for i in dict.fromkeys(ids)),
    ]
    longest_id = max([FRESH_ID_CHARS, *(len(i.encode()) for i in ids)])
    longest_line = (
        max_depth + len("[] ") + longest_id + 24 + len(" ''") + max_name_chars + max_props * 44
    )
    return _wrap_up_line("close", longest_line + len("\n</a11y>")) + "\n" + "\n".join(rules) + "\n"


def _reason_then_score(score: str) -> str:
    longest_score = 3  # "0.5" or a small integer
    return (
        "\n".join(
            [
                _wrap_up_line("score_line", len("\nScore: ") + longest_score),
                'root ::= "Reason: " [^\\n]* score_line',
                f'score_line ::= "\\nScore: " ({score})',
            ]
        )
        + "\n"
    )


def _wrap_up_line(rule: str, answer_bytes: int) -> str:
    # One token per byte at worst, one for the end-of-turn token, and the UTF-8 slack.
    return f"# wrap-up: {rule} within {answer_bytes + 1 + _UTF8_SLACK} tokens"


@cache
def _literal(text: str) -> str:
    """An EBNF string literal (JSON escapes are a subset of GBNF's)."""
    return json.dumps(text, ensure_ascii=False)


# --- the world model's change format (appended: see websynthesis/web/tree_delta.py) -------


def delta_grammar(
    ids: Sequence[str] = (),
    *,
    root: str | None = None,
    max_depth: int = 8,
    max_name_chars: int = 48,
    max_props: int = 2,
    max_title_chars: int = 64,
) -> str:
    """The world model's answer as a change: a ``<changes>`` block, or a whole ``<a11y>`` page.

    Why both: most actions change a few elements, which a small model writes far more
    reliably than a whole page; a navigation replaces the page, which is shorter written
    whole. The page alternative is :func:`a11y_grammar`'s, and element lines (``~`` lines
    and inserted ones) use its line rules, so they read as strict WebArena lines.

    The header line, if any, comes first (one tab; its title without ``|``). ``~`` lines,
    ``-`` lines and insertion anchors name ids of the current page (``ids``); ``root``
    (default: the first id, the page's root in document order) can be changed or inserted
    into, but not removed or given a sibling. Inserted elements take fresh ids or page
    ids (a moved element is removed, then inserted again). A grammar cannot follow the
    edits, so an answer that parses may still not apply (an id removed twice, an inserted
    id already on the page), as a constrained page may repeat an id;
    :func:`websynthesis.web.tree_delta.apply_delta` says which. The wrap-up closes the
    block (or the page) after any complete line.
    """
    known = list(dict.fromkeys(ids))
    root = known[0] if root is None and known else root
    inner = [i for i in known if i != root]
    rules = [
        "root ::= changes | page",
        'changes ::= "<changes>" ("\\n" retitle)? ("\\n" edit)* "\\n</changes>"',
        'finish ::= "\\n</" ("changes>" | "a11y>")',
        'retitle ::= "header Tab 0 (current): " title',
        f"title ::= [^\\n\\r|]{{0,{max_title_chars}}}",
    ]
    if known:
        anchors = ['"+ in [" old "]"', *(['"+ after [" inner "]"'] if inner else [])]
        rules += [
            "edit ::= change | insert" + (" | remove" if inner else ""),
            f'change ::= "~ [" old "] " role " " name (" " prop){{0,{max_props}}}',
            f'insert ::= ({" | ".join(anchors)}) ("\\n" d0)+',
            "old ::= " + " | ".join(_literal(i) for i in known),
        ]
    else:  # nothing on the page to name: only the header can change
        rules[1] = 'changes ::= "<changes>" ("\\n" retitle)? "\\n</changes>"'
    if inner:
        rules += ['remove ::= "- [" inner "]"', "inner ::= " + " | ".join(map(_literal, inner))]
    page = a11y_grammar(
        known, max_depth=max_depth, max_name_chars=max_name_chars, max_props=max_props
    )
    rules += [
        re.sub(r"^root ::=", "page ::=", rule)
        for rule in page.splitlines()
        if rule and not rule.startswith("#")
    ]
    longest_id = max([FRESH_ID_CHARS, *(len(i.encode()) for i in known)])
    line = len("[] ") + longest_id + 24 + len(" ''") + max_name_chars + max_props * 44
    longest_edit = max(
        len("\nheader Tab 0 (current): ") + max_title_chars,
        len("\n~ ") + line,
        len("\n+ after []\n") + longest_id + max_depth + line,
        len("\n") + max_depth + line,  # a line of the page
    )
    reserve = longest_edit + len("\n</changes>")
    return _wrap_up_line("finish", reserve) + "\n" + "\n".join(rules) + "\n"
