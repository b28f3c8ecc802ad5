"""Reading one line of tree text that the strict WebArena pattern rejected.

Such a line is either in the BrowserGym dialect (``[a51] button 'Submit', required,
expanded=False``), or a damaged element line (spaces for indentation, stray quotes,
truncated), or not an element at all (prose, markdown fences, tags). This module decides
which, recovers what it can, and names each problem, so that :mod:`.ax_parse` only deals
with document structure. It also defines the error vocabulary, which is the STR metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from .ax_node import (
    ID_PATTERN,
    KEY_PATTERN,
    QUOTED,
    ROLE_PATTERN,
    WEBARENA_LINE,
    AXNode,
    decode_quoted,
    decode_unterminated,
    parse_webarena_props,
)


class Dialect(StrEnum):
    """Which text format a tree was read from (rendering is always WebArena's)."""

    WEBARENA = "webarena"
    BROWSERGYM = "browsergym"


class ErrorKind(StrEnum):
    """Kinds of structural problems; a tree with none is structurally valid (STR).

    A problem is anything WebArena's own serializer could not have written. Tolerated,
    because they change nothing: trailing whitespace after the last line or after an
    element, and non-canonical but unambiguous name quoting (the corpus has both).
    """

    EMPTY_TREE = "empty_tree"  # no element at all
    JUNK_BEFORE = "junk_before"  # prose, fences, tags, blank lines before the tree
    JUNK_AFTER = "junk_after"  # the same after it
    BAD_HEADER = "bad_header"  # not `Tab N (current): title`, or no blank line after it
    UNPARSEABLE_LINE = "unparseable_line"  # a non-element line inside the tree
    BLANK_LINE = "blank_line"  # an empty line inside the tree
    CARRIAGE_RETURN = "carriage_return"  # CRLF line endings
    SPACE_INDENT = "space_indent"  # indentation with spaces instead of tabs
    ROOT_DEPTH = "root_depth"  # the first element is indented
    DEPTH_JUMP = "depth_jump"  # an element more than one level below the previous one
    MULTIPLE_ROOTS = "multiple_roots"  # a second element at depth 0
    DUPLICATE_ID = "duplicate_id"  # an id used twice
    MISSING_ID = "missing_id"  # no `[id]` (WebArena dialect; BrowserGym allows it)
    MISSING_NAME = "missing_name"  # no quoted name (BrowserGym allows it for generic)
    BAD_SPACING = "bad_spacing"  # e.g. `[1]link` or two spaces before the name
    BAD_QUOTE = "bad_quote"  # unquoted name, stray quote inside it, or no closing quote
    BAD_PROPS = "bad_props"  # text after the name that is not `key: value` properties
    MIXED_DIALECT = "mixed_dialect"  # WebArena and BrowserGym attributes in one tree


@dataclass(frozen=True, slots=True)
class TreeError:
    """One structural problem. ``line`` is 1-based; ``None`` means the text as a whole."""

    line: int | None
    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        where = "text" if self.line is None else f"line {self.line}"
        return f"{where}: {self.kind}: {self.message}"


class LineRead(NamedTuple):
    """An element recovered from one line, before it is placed in the tree."""

    node: AXNode
    tabs: int
    spaces: int
    evidence: Dialect | None  # the dialect this line's attribute syntax proves, if any
    has_name: bool
    problems: list[tuple[ErrorKind, str]]


_BG_VALUE = rf"(?:{QUOTED}|[^,'\"]*)"
_BG_TAIL = rf"(?: value={_BG_VALUE})?(?:, {KEY_PATTERN}(?:={_BG_VALUE})?)*"
_BROWSERGYM_LINE = re.compile(
    rf"(?:\[({ID_PATTERN})\] )?({ROLE_PATTERN})(?: ({QUOTED}))?({_BG_TAIL})"
)
_BG_TAIL_RE = re.compile(_BG_TAIL)
_BG_VALUE_PREFIX = re.compile(rf" value=({_BG_VALUE})")
_BG_ATTR = re.compile(rf", ({KEY_PATTERN})(?:=({_BG_VALUE}))?")
_WA_TAIL_RE = re.compile(rf"(?: {KEY_PATTERN}: .*)?")
_WA_PROP_START = re.compile(rf" {KEY_PATTERN}: ")
_HEAD = re.compile(rf"(?:\[([^\]]*)\] ?)?({ROLE_PATTERN})")
_PROSE_WORD = re.compile(r"[A-Za-z][\w-]*")
_QUOTED_RE = re.compile(QUOTED)


def _bg_value(token: str) -> str:
    if len(token) >= 2 and token[0] in "'\"" and token[-1] == token[0]:
        return decode_quoted(token)
    return token


def parse_browsergym_attrs(tail: str) -> dict[str, str]:
    """``" value='x', required, expanded=False"`` -> ``{"value": "x", "required": "True", ...}``.

    Bare words are flags that BrowserGym prints only when true.
    """
    props: dict[str, str] = {}
    start = 0
    prefix = _BG_VALUE_PREFIX.match(tail)
    if prefix is not None:
        props["value"] = _bg_value(prefix.group(1))
        start = prefix.end()
    for match in _BG_ATTR.finditer(tail, start):
        key, value = match.groups()
        props[key] = "True" if value is None else _bg_value(value)
    return props


def _read_tail(tail: str) -> tuple[dict[str, str], Dialect | None] | None:
    """Props of a well-formed attribute tail in either dialect, else ``None``."""
    if not tail.strip():
        return {}, None
    if _WA_TAIL_RE.fullmatch(tail):
        return parse_webarena_props(tail), Dialect.WEBARENA
    stripped = tail.rstrip()
    if _BG_TAIL_RE.fullmatch(stripped):
        return parse_browsergym_attrs(stripped), Dialect.BROWSERGYM
    return None


def _salvage_props(tail: str) -> dict[str, str]:
    start = _WA_PROP_START.search(tail)
    return parse_webarena_props(tail[start.start() :]) if start else {}


def read_line(line: str, line_no: int) -> LineRead | None:
    """Recover an element from a non-strict line, or ``None`` if it is not one.

    The caller has already ruled out blank lines and strict WebArena lines.
    """
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    tabs = indent.count("\t")
    spaces = len(indent) - tabs
    problems: list[tuple[ErrorKind, str]] = []
    if spaces:
        problems.append((ErrorKind.SPACE_INDENT, "indentation uses spaces, not tabs"))
    body = line[len(indent) :]
    read = _read_strict(body, tabs, line_no) or _recover(body, tabs, line_no, problems)
    if read is None:
        return None
    node, evidence, has_name = read
    return LineRead(node, tabs, spaces, evidence, has_name, problems)


def _read_strict(body: str, depth: int, line_no: int) -> tuple[AXNode, Dialect | None, bool] | None:
    match = WEBARENA_LINE.fullmatch(body) or WEBARENA_LINE.fullmatch(body.rstrip())
    if match is not None:
        _, node_id, role, token, tail = match.groups()
        name = decode_quoted(token)
        node = AXNode.from_parts(
            node_id, role, name, tail=tail, depth=depth, body=body, line_no=line_no
        )
        return node, (Dialect.WEBARENA if tail else None), True
    match = _BROWSERGYM_LINE.fullmatch(body.rstrip())
    if match is None:
        return None
    node_id, role, token, tail = match.groups()
    if node_id is None and token is None and role != "generic":
        return None  # BrowserGym omits the name of unnamed generics only; this is prose
    name = "" if token is None else decode_quoted(token)
    props = parse_browsergym_attrs(tail)
    node = AXNode.from_parts(node_id, role, name, props=props, depth=depth, line_no=line_no)
    unnamed_generic = token is None and role == "generic"  # BrowserGym's own shorthand
    evidence = Dialect.BROWSERGYM if tail or unnamed_generic else None
    return node, evidence, token is not None


def _recover(
    body: str, depth: int, line_no: int, problems: list[tuple[ErrorKind, str]]
) -> tuple[AXNode, Dialect | None, bool] | None:
    """Salvage id, role, name and props from a damaged element line."""
    head = _HEAD.match(body)
    if head is None:
        return None
    raw_id, role = head.groups()
    node_id = None if raw_id is None else raw_id.strip() or None
    if node_id is not None and re.fullmatch(ID_PATTERN, node_id) is None:
        return None
    rest = body[head.end() :].lstrip(" ")
    if raw_id is None and (not rest or rest[0] not in "'\"" or not _PROSE_WORD.fullmatch(role)):
        return None  # an id-less line must look like `role 'name'`, or it is prose
    name, props, evidence = _recover_name(rest, problems)
    node = AXNode.from_parts(node_id, role, name, props=props, depth=depth, line_no=line_no)
    return node, evidence, True


def _recover_name(
    rest: str, problems: list[tuple[ErrorKind, str]]
) -> tuple[str, dict[str, str], Dialect | None]:
    if not rest or rest[0] not in "'\"":
        spaced = " " + rest
        split = _WA_PROP_START.search(spaced)
        cut = len(spaced) if split is None else split.start()
        problems.append((ErrorKind.BAD_QUOTE, "the name is not quoted"))
        return spaced[:cut].strip(), _salvage_props(spaced[cut:]), None
    quote = rest[0]
    token = _QUOTED_RE.match(rest)
    if token is not None:
        read = _read_tail(rest[token.end() :])
        if read is not None:  # so the strict patterns failed on the spacing before it
            problems.append((ErrorKind.BAD_SPACING, "expected `[id] role 'name'` spacing"))
            return decode_quoted(token.group()), read[0], read[1]
    for close in _quote_positions(rest, quote):
        read = _read_tail(rest[close + 1 :])
        if read is not None:
            problems.append((ErrorKind.BAD_QUOTE, f"unescaped {quote} inside the name"))
            return decode_unterminated(rest[1:close]), read[0], read[1]
    if token is not None:
        problems.append((ErrorKind.BAD_PROPS, f"cannot read properties {rest[token.end() :]!r}"))
        return decode_quoted(token.group()), _salvage_props(rest[token.end() :]), None
    problems.append((ErrorKind.BAD_QUOTE, "the name has no closing quote (truncated line?)"))
    return decode_unterminated(rest[1:]), {}, None


def _quote_positions(rest: str, quote: str) -> list[int]:
    """Candidate closing quotes, last first: the name most likely runs to the last one."""
    return [match.start() for match in re.finditer(quote, rest)][:0:-1]
