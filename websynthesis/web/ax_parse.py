"""From text to linked nodes: document layout, dialect, tree structure, and their errors.

A well-formed observation is ``[header line, "", element lines...]`` with an optional
trailing newline, where element depths start at 0, never rise by more than one, and
ids are unique. Everything else (prose, fences, space indentation, ...) is recovered
where possible and reported as a :class:`TreeError`; parsing never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from .ax_lines import Dialect, ErrorKind, LineRead, TreeError, read_line
from .ax_node import WEBARENA_LINE, AXNode, decode_quoted

_HEADER_LIKE = re.compile(r"Tab \d+")
_TAB_SPLIT = re.compile(r" \| (?=Tab \d+(?: \(current\))?: )")
_TAB = re.compile(r"Tab (\d+)( \(current\))?: (.*)")
_MARKER = re.compile(r"\.\.\. \((\d+) more elements? truncated\)")


def truncation_marker(omitted: int) -> str:
    """The last line of a truncated tree; :func:`parse_document` reads it back."""
    return f"... ({omitted} more element{'s' if omitted != 1 else ''} truncated)"


class Tab(NamedTuple):
    """One browser tab named in the observation header."""

    index: int
    title: str
    current: bool


def parse_tabs(header: str) -> list[Tab] | None:
    """Tabs of a ``Tab 0: a | Tab 1 (current): b`` header, or ``None`` if malformed."""
    tabs = []
    for part in _TAB_SPLIT.split(header):
        match = _TAB.fullmatch(part)
        if match is None:
            return None
        tabs.append(Tab(int(match.group(1)), match.group(3), match.group(2) is not None))
    return tabs


def header_errors(header: str, line: int) -> list[TreeError]:
    """Problems with a header line: it must name its tabs and exactly one current tab."""
    tabs = parse_tabs(header) if "\n" not in header else None
    if tabs is None or sum(tab.current for tab in tabs) != 1:
        return [TreeError(line, ErrorKind.BAD_HEADER, "expected 'Tab N (current): title'")]
    return []


class ParsedDocument(NamedTuple):
    """Everything :class:`~websynthesis.web.observation.AXTree` needs, already linked."""

    nodes: list[AXNode]
    header: str | None
    errors: list[TreeError]
    dialect: Dialect
    trailer: str
    truncated: int


class _Scan(NamedTuple):
    nodes: list[AXNode]
    webarena_votes: list[int]  # line numbers of strict lines with WebArena props
    idless: list[int]  # line numbers of strict lines without an [id]
    slow: list[tuple[int, LineRead]]  # (index into nodes, read) for non-strict lines
    others: list[int]  # indices of lines that are not elements
    treeish: list[int]  # indices of non-element lines that still look like tree lines


def parse_document(text: str) -> ParsedDocument:
    """Parse observation text leniently; see the module docstring."""
    errors: list[TreeError] = []
    if "\r\n" in text:  # a lone \r is content: raw control characters occur in names
        line = text.count("\n", 0, text.index("\r\n")) + 1
        errors.append(TreeError(line, ErrorKind.CARRIAGE_RETURN, "CRLF line endings"))
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    trailer = _pop_trailer(lines, text)
    scan = _scan(lines)
    dialect = _dialect(scan, errors)
    first, last = _tree_span(scan, lines)
    header = _read_prelude(lines[:first], errors)
    truncated = _read_postlude(lines, last + 1, errors)
    for index in scan.others:
        if first <= index <= last:
            blank = not lines[index].strip(" \t")
            kind = ErrorKind.BLANK_LINE if blank else ErrorKind.UNPARSEABLE_LINE
            errors.append(TreeError(index + 1, kind, f"not an element: {lines[index][:60]!r}"))
    depths = _apply_line_problems(scan, dialect, errors)
    errors.extend(link_nodes(scan.nodes, depths))
    errors.sort(key=lambda error: error.line or 0)
    return ParsedDocument(scan.nodes, header, errors, dialect, trailer, truncated)


def _pop_trailer(lines: list[str], text: str) -> str:
    """Remove and return trailing whitespace-only lines: a final newline is conventional."""
    popped = 0
    while lines and not lines[-1].strip(" \t"):
        popped += len(lines.pop()) + 1
    return text[max(0, len(text) - popped) :]


def _scan(lines: list[str]) -> _Scan:
    """Read every line; strict WebArena lines take the fast path (the MCTS hot loop)."""
    nodes: list[AXNode] = []
    votes: list[int] = []
    idless: list[int] = []
    slow: list[tuple[int, LineRead]] = []
    others: list[int] = []
    treeish: list[int] = []
    strict = WEBARENA_LINE.fullmatch
    make = AXNode.from_parts
    for index, line in enumerate(lines):
        match = strict(line)
        if match is not None:
            tabs, node_id, role, token, tail = match.groups()
            depth = len(tabs)
            name = decode_quoted(token) if "\\" in token else token[1:-1]
            body = line[depth:] if depth else line
            nodes.append(make(node_id, role, name, tail=tail, depth=depth, body=body,
                              line_no=index + 1))  # fmt: skip
            if tail:
                votes.append(index + 1)
            if node_id is None:
                idless.append(index + 1)
            continue
        read = read_line(line, index + 1) if line.strip(" \t") else None
        if read is None:
            others.append(index)
            if line[:1] in ("\t", "["):
                treeish.append(index)
            continue
        slow.append((len(nodes), read))
        nodes.append(read.node)
    return _Scan(nodes, votes, idless, slow, others, treeish)


def _dialect(scan: _Scan, errors: list[TreeError]) -> Dialect:
    """Majority vote of the lines whose attribute syntax gives their dialect away.

    Strict lines with props are WebArena votes; BrowserGym votes come from slow lines.
    With no attribute at all, non-numeric ids (BrowserGym's ``a51``) decide.
    """
    votes = {Dialect.WEBARENA: list(scan.webarena_votes), Dialect.BROWSERGYM: []}
    for _, read in scan.slow:
        if read.evidence is not None:
            votes[read.evidence].append(read.node.line_no or 0)
    wa_lines, bg_lines = votes[Dialect.WEBARENA], votes[Dialect.BROWSERGYM]
    if wa_lines and bg_lines:
        minority = min(wa_lines) if len(wa_lines) < len(bg_lines) else min(bg_lines)
        errors.append(TreeError(minority, ErrorKind.MIXED_DIALECT, "both dialects in one tree"))
    if len(bg_lines) > len(wa_lines):
        return Dialect.BROWSERGYM
    if not wa_lines and any(n.id is not None and not n.id.isdigit() for n in scan.nodes):
        return Dialect.BROWSERGYM
    return Dialect.WEBARENA


def _tree_span(scan: _Scan, lines: list[str]) -> tuple[int, int]:
    """First and last line indices of the tree proper (elements and damaged tree lines)."""
    marks = scan.treeish[:1] + scan.treeish[-1:]
    marks += [(node.line_no or 1) - 1 for node in scan.nodes[:1] + scan.nodes[-1:]]
    return (min(marks), max(marks)) if marks else (len(lines), len(lines) - 1)


def _read_prelude(prelude: list[str], errors: list[TreeError]) -> str | None:
    """The header, if any; anything but ``[header, ""]`` before the tree is junk."""
    at = next((i for i, line in enumerate(prelude) if _HEADER_LIKE.match(line)), None)
    if at is None:
        _junk(prelude, 0, ErrorKind.JUNK_BEFORE, errors)
        return None
    header = prelude[at]
    errors.extend(header_errors(header, at + 1))
    _junk(prelude[:at], 0, ErrorKind.JUNK_BEFORE, errors)
    after = prelude[at + 1 :]
    if after[:1] == [""]:
        _junk(after[1:], at + 2, ErrorKind.JUNK_BEFORE, errors)
    elif not after:
        errors.append(TreeError(at + 1, ErrorKind.BAD_HEADER, "no blank line after the header"))
    else:
        _junk(after, at + 1, ErrorKind.JUNK_BEFORE, errors)
    return header


def _read_postlude(lines: list[str], start: int, errors: list[TreeError]) -> int:
    """Number of elements a truncation marker says were cut; the rest is junk."""
    marker = _MARKER.fullmatch(lines[start]) if start < len(lines) else None
    if marker is not None:
        start += 1
    _junk(lines[start:], start, ErrorKind.JUNK_AFTER, errors)
    return int(marker.group(1)) if marker else 0


def _junk(block: list[str], offset: int, kind: ErrorKind, errors: list[TreeError]) -> None:
    if block:
        where = "before" if kind is ErrorKind.JUNK_BEFORE else "after"
        message = f"{len(block)} non-tree line(s) {where} the tree, e.g. {block[0][:60]!r}"
        errors.append(TreeError(offset + 1, kind, message))


def _apply_line_problems(
    scan: _Scan, dialect: Dialect, errors: list[TreeError]
) -> list[int] | None:
    """Report per-line problems; return the depths if space indentation changes any.

    The width of one space-indented level is the narrowest space indentation seen.
    """
    unit = min((read.spaces for _, read in scan.slow if read.spaces), default=0)
    depths = [node.depth for node in scan.nodes] if unit else None
    webarena = dialect is Dialect.WEBARENA
    if webarena:
        errors.extend(missing_id_error(line) for line in scan.idless)
    for index, read in scan.slow:
        line = read.node.line_no
        errors.extend(TreeError(line, kind, message) for kind, message in read.problems)
        if depths is not None:
            depths[index] = read.tabs + read.spaces // unit
        if webarena and read.node.id is None:
            errors.append(missing_id_error(line))
        if not read.has_name and (webarena or read.node.role != "generic"):
            errors.append(TreeError(line, ErrorKind.MISSING_NAME, "element has no quoted name"))
    return depths


def missing_id_error(line: int | None) -> TreeError:
    return TreeError(line, ErrorKind.MISSING_ID, "element has no [id]")


def link_nodes(nodes: Sequence[AXNode], depths: Sequence[int] | None = None) -> list[TreeError]:
    """Give fresh nodes their parent, children and final depth; report structural errors.

    ``depths`` overrides the nodes' own. A first node below depth 0 shifts the whole
    tree up (a uniformly indented block is one mistake, not one per line); a depth that
    rises by more than one is clamped.
    """
    if not nodes:
        return [TreeError(None, ErrorKind.EMPTY_TREE, "no elements")]
    if depths is None:
        depths = [node.depth for node in nodes]
    errors: list[TreeError] = []
    base = depths[0]
    if base:
        errors.append(TreeError(nodes[0].line_no, ErrorKind.ROOT_DEPTH, f"root at depth {base}"))
    stack: list[AXNode] = []
    seen: set[str] = set()
    for node, raw_depth in zip(nodes, depths, strict=True):
        depth = raw_depth - base if raw_depth > base else 0
        if depth > len(stack):
            message = f"depth {depth} under depth {len(stack) - 1}"
            errors.append(TreeError(node.line_no, ErrorKind.DEPTH_JUMP, message))
            depth = len(stack)
        del stack[depth:]
        if not stack and node is not nodes[0]:
            errors.append(TreeError(node.line_no, ErrorKind.MULTIPLE_ROOTS, "second root"))
        node._attach(stack[-1] if stack else None, depth)
        stack.append(node)
        node_id = node.id
        if node_id is not None:
            if node_id in seen:
                message = f"id {node_id} already used"
                errors.append(TreeError(node.line_no, ErrorKind.DUPLICATE_ID, message))
            seen.add(node_id)
    return errors
