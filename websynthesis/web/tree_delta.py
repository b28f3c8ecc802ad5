"""What an action changed, as a short edit script over accessibility-tree lines.

Why: most steps change a few elements of a long page, and a small world model cannot copy
a 50-line page token by token. Asked for *what changed* instead (the transition-focused
abstraction of WMA, Chae et al. 2024), it writes only the change, and this module applies
it to the current page, so the predicted page stays as faithful as copying.

The text form, one edit per line, every element addressed by its ``[id]``::

    <changes>
    header Tab 0 (current): Order #12          the header line now reads so
    ~ [14] textbox 'Name' focused: True        element 14's own line now reads so (children kept)
    - [12]                                     element 12 and its subtree are gone
    + after [14]                               new elements: next siblings of 14 ...
    [30] StaticText 'Saved'
    + in [17]                                  ... or first children of 17
    [31] dialog 'Confirm'
    \t[32] button 'OK'
    </changes>

An insertion is a ``+ after [id]`` or ``+ in [id]`` line followed by one or more element
lines in the page's own format, indented relative to the inserted siblings (the first line
has no tab), so a new subtree is written as it will look. Edits apply in order, each to the
page the previous ones left; an empty block means the page did not visibly change.

:func:`tree_delta` finds a delta, :func:`apply_delta` applies one (raising a
:class:`DeltaError` that names its kind and line), :meth:`Delta.render` and
:func:`parse_delta` convert the text form; ``parse_delta(d.render()) == d``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .ax_node import ID_PATTERN, WEBARENA_LINE, AXNode, decode_quoted
from .ax_parse import header_errors
from .observation import AXTree

__all__ = [
    "CHANGES_CLOSE",
    "CHANGES_OPEN",
    "Change",
    "Delta",
    "DeltaError",
    "DeltaErrorKind",
    "Edit",
    "Insert",
    "Remove",
    "apply_delta",
    "parse_delta",
    "tree_delta",
]

CHANGES_OPEN, CHANGES_CLOSE = "<changes>", "</changes>"
HEADER_PREFIX = "header "
_REMOVE = re.compile(rf"- \[({ID_PATTERN})\]")
_INSERT = re.compile(rf"\+ (after|in) \[({ID_PATTERN})\]")


class DeltaErrorKind(StrEnum):
    """Why a delta text does not read, or a delta does not apply to a page."""

    BAD_ENVELOPE = "bad_envelope"  # not `<changes>` ... `</changes>`, or text around it
    UNCLOSED = "unclosed"  # `<changes>` is never closed (the answer was cut off)
    BAD_LINE = "bad_line"  # a line that is no edit
    BAD_HEADER = "bad_header"  # not `header Tab N (current): title`, or a second header
    BAD_ELEMENT = "bad_element"  # element text that is not `[id] role 'name' key: value`
    BAD_BLOCK = "bad_block"  # an insertion without elements, or badly indented
    UNKNOWN_ID = "unknown_id"  # an edit names an id the page does not have (now)
    AMBIGUOUS_ID = "ambiguous_id"  # an edit names an id the page has more than once
    ID_CLASH = "id_clash"  # an inserted element takes an id already in use
    ROOT_EDIT = "root_edit"  # removing the root, or giving it a sibling


class DeltaError(ValueError):
    """A delta that does not read or apply. ``line`` is 1-based in the delta text."""

    def __init__(self, kind: DeltaErrorKind, message: str, line: int | None = None) -> None:
        where = "delta" if line is None else f"delta line {line}"
        super().__init__(f"{where}: {kind}: {message}")
        self.kind, self.message, self.line = kind, message, line


# --- the edits ------------------------------------------------------------------------------

# ``line`` on an edit is where it was read from (for error messages); it is not part of the
# edit's value, so a parsed delta equals the one that was rendered.


@dataclass(frozen=True, slots=True)
class Change:
    """The element whose id ``body`` names now reads ``body`` (``[id] role 'name' …``)."""

    body: str
    line: int | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str | None:
        match = WEBARENA_LINE.fullmatch(self.body)
        return None if match is None or match.group(1) else match.group(2)

    def render(self) -> list[str]:
        return [f"~ {self.body}"]


@dataclass(frozen=True, slots=True)
class Remove:
    """The element ``id`` and its subtree are gone."""

    id: str
    line: int | None = field(default=None, compare=False, repr=False)

    def render(self) -> list[str]:
        return [f"- [{self.id}]"]


@dataclass(frozen=True, slots=True)
class Insert:
    """New elements: the next siblings of ``anchor``, or its first children if ``inside``.

    ``lines`` are element lines indented relative to the new siblings (the first has no tab).
    """

    anchor: str
    inside: bool
    lines: tuple[str, ...]
    line: int | None = field(default=None, compare=False, repr=False)

    def render(self) -> list[str]:
        return [f"+ {'in' if self.inside else 'after'} [{self.anchor}]", *self.lines]


Edit = Change | Remove | Insert


@dataclass(frozen=True, slots=True)
class Delta:
    """A page change: a new header line (``None``: unchanged) and edits applied in order."""

    header: str | None = None
    edits: tuple[Edit, ...] = ()

    def __bool__(self) -> bool:
        return self.header is not None or bool(self.edits)

    def render(self) -> str:
        """The canonical text, ``<changes>`` to ``</changes>``, one line per edit line."""
        return "\n".join([CHANGES_OPEN, *self._body_lines(), CHANGES_CLOSE])

    def _body_lines(self) -> Iterator[str]:
        if self.header is not None:
            yield HEADER_PREFIX + self.header
        for edit in self.edits:
            yield from edit.render()

    def _canonical_lines(self) -> list[int]:
        """The line each edit has in :meth:`render`'s text (for edits built in code)."""
        line = 2 + (self.header is not None)
        lines = []
        for edit in self.edits:
            lines.append(line)
            line += len(edit.render())
        return lines


# --- reading the text form ------------------------------------------------------------------


def parse_delta(text: str) -> Delta:
    """Read a ``<changes>`` block (whitespace around it allowed); raises :class:`DeltaError`.

    Blank lines between edits are ignored. Element text must be strict WebArena
    ``[id] role 'name' key: value`` with an id: there is no page around it to repair it by.
    """
    start = len(text) - len(text.lstrip())
    first_line = text.count("\n", 0, start) + 1
    stripped = text.strip()
    if not stripped.startswith(CHANGES_OPEN):
        raise DeltaError(DeltaErrorKind.BAD_ENVELOPE, "expected <changes> first", first_line)
    if not stripped.endswith(CHANGES_CLOSE) or len(stripped) < len(CHANGES_OPEN + CHANGES_CLOSE):
        line = first_line + stripped.count("\n")
        raise DeltaError(DeltaErrorKind.UNCLOSED, "no closing </changes>", line)
    body = stripped[len(CHANGES_OPEN) : -len(CHANGES_CLOSE)]
    return _Reader(body.split("\n"), first_line).read()


class _Reader:
    """One pass over the lines inside the tags; line ``k`` of ``lines`` is text line
    ``first + k`` (the first shares its line with ``<changes>``)."""

    def __init__(self, lines: list[str], first: int) -> None:
        self.lines, self.first, self.at = lines, first, 0

    def read(self) -> Delta:
        header: str | None = None
        edits: list[Edit] = []
        while self.at < len(self.lines):
            text, line = self.lines[self.at], self.first + self.at
            self.at += 1
            if not text.strip(" \t"):
                continue
            if text.startswith(HEADER_PREFIX):
                if header is not None:
                    raise DeltaError(DeltaErrorKind.BAD_HEADER, "a second header line", line)
                header = text[len(HEADER_PREFIX) :]
                if header_errors(header, line):
                    message = f"expected 'Tab N (current): title', got {header[:60]!r}"
                    raise DeltaError(DeltaErrorKind.BAD_HEADER, message, line)
            elif text.startswith("~ "):
                edits.append(Change(_element(text[2:], line, indented=False), line))
            elif remove := _REMOVE.fullmatch(text):
                edits.append(Remove(remove.group(1), line))
            elif insert := _INSERT.fullmatch(text):
                block = self._block(line)
                edits.append(Insert(insert.group(2), insert.group(1) == "in", block, line))
            elif text.startswith(("[", "\t")):
                message = "an element line outside an insertion (`+ after [id]` / `+ in [id]`)"
                raise DeltaError(DeltaErrorKind.BAD_BLOCK, message, line)
            else:
                raise DeltaError(DeltaErrorKind.BAD_LINE, f"not an edit: {text[:60]!r}", line)
        return Delta(header, tuple(edits))

    def _block(self, line: int) -> tuple[str, ...]:
        """The element lines after an insertion line: each at most one tab deeper."""
        block: list[str] = []
        depth = -1
        while self.at < len(self.lines) and self.lines[self.at].startswith(("[", "\t")):
            text, at = self.lines[self.at], self.first + self.at
            self.at += 1
            _element(text, at, indented=True)
            tabs = len(text) - len(text.lstrip("\t"))
            if tabs > depth + 1:
                message = f"depth {tabs} under depth {depth}" if block else "first line indented"
                raise DeltaError(DeltaErrorKind.BAD_BLOCK, message, at)
            block.append(text)
            depth = tabs
        if not block:
            raise DeltaError(DeltaErrorKind.BAD_BLOCK, "an insertion without elements", line)
        return tuple(block)


def _element(text: str, line: int | None, *, indented: bool) -> str:
    """Check one element line (tabs allowed only if ``indented``); returns it."""
    match = WEBARENA_LINE.fullmatch(text)
    if match is None or (match.group(1) and not indented):
        message = f"expected `[id] role 'name' key: value`, got {text[:60]!r}"
        raise DeltaError(DeltaErrorKind.BAD_ELEMENT, message, line)
    if match.group(2) is None:
        raise DeltaError(DeltaErrorKind.BAD_ELEMENT, "an element without [id]", line)
    return text


# --- applying -------------------------------------------------------------------------------


class _Slot:
    """A mutable tree position while edits are applied."""

    __slots__ = ("children", "node", "parent")

    def __init__(self, node: AXNode, parent: _Slot | None) -> None:
        self.node, self.parent = node, parent
        self.children: list[_Slot] = []

    def walk(self, depth: int = 0) -> Iterator[tuple[_Slot, int]]:
        stack = [(self, depth)]
        while stack:
            slot, level = stack.pop()
            yield slot, level
            stack.extend((child, level + 1) for child in reversed(slot.children))


def _node(line: str) -> tuple[AXNode, int]:
    """The element of a checked line (raw text kept, as a parsed page keeps it), and its tabs."""
    match = WEBARENA_LINE.fullmatch(line)
    assert match is not None  # checked by _element
    tabs, node_id, role, token, tail = match.groups()
    body = line[len(tabs) :]
    return AXNode.from_parts(node_id, role, decode_quoted(token), tail=tail, body=body), len(tabs)


class _Applier:
    def __init__(self, before: AXTree) -> None:
        self.roots: list[_Slot] = []
        self.index: dict[str, _Slot] = {}
        self.repeated: set[str] = set()
        stack: list[_Slot] = []
        for node in before.nodes:
            del stack[node.depth :]
            slot = _Slot(node, stack[-1] if stack else None)
            (slot.parent.children if slot.parent else self.roots).append(slot)
            stack.append(slot)
            if node.id is not None:
                if node.id in self.index:
                    self.repeated.add(node.id)
                self.index[node.id] = slot

    def find(self, node_id: str | None, line: int) -> _Slot:
        if node_id is None or node_id not in self.index:
            raise DeltaError(DeltaErrorKind.UNKNOWN_ID, f"no element [{node_id}]", line)
        if node_id in self.repeated:
            raise DeltaError(DeltaErrorKind.AMBIGUOUS_ID, f"[{node_id}] is not unique", line)
        return self.index[node_id]

    def apply(self, edit: Edit, line: int) -> None:
        if isinstance(edit, Change):
            _element(edit.body, line, indented=False)
            slot = self.find(edit.id, line)
            slot.node = _node(edit.body)[0]
        elif isinstance(edit, Remove):
            slot = self.find(edit.id, line)
            if slot.parent is None:
                raise DeltaError(DeltaErrorKind.ROOT_EDIT, "the root cannot be removed", line)
            slot.parent.children.remove(slot)
            for gone, _ in slot.walk():
                if gone.node.id is not None and self.index.get(gone.node.id) is gone:
                    del self.index[gone.node.id]
        else:
            self.insert(edit, line)

    def insert(self, edit: Insert, line: int) -> None:
        anchor = self.find(edit.anchor, line)
        if not edit.inside and anchor.parent is None:
            raise DeltaError(DeltaErrorKind.ROOT_EDIT, "the root cannot have siblings", line)
        parent = anchor if edit.inside else anchor.parent
        assert parent is not None
        new: list[_Slot] = []
        stack: list[_Slot] = []
        for offset, text in enumerate(edit.lines):
            _element(text, line + 1 + offset, indented=True)
            node, depth = _node(text)
            if depth > len(stack):
                raise DeltaError(DeltaErrorKind.BAD_BLOCK, "badly indented", line + 1 + offset)
            del stack[depth:]
            slot = _Slot(node, stack[-1] if stack else parent)
            (stack[-1].children if stack else new).append(slot)
            stack.append(slot)
            assert node.id is not None
            if node.id in self.index:
                message = f"[{node.id}] is already on the page"
                raise DeltaError(DeltaErrorKind.ID_CLASH, message, line + 1 + offset)
            self.index[node.id] = slot
        if not new:
            raise DeltaError(DeltaErrorKind.BAD_BLOCK, "an insertion without elements", line)
        at = 0 if edit.inside else parent.children.index(anchor) + 1
        parent.children[at:at] = new

    def nodes(self) -> list[AXNode]:
        return [slot.node.relocated(depth) for root in self.roots for slot, depth in root.walk()]


def apply_delta(before: AXTree, delta: Delta) -> AXTree:
    """``before`` with ``delta`` applied; raises :class:`DeltaError` where it does not apply.

    Unchanged elements keep their raw text; the tree keeps ``before``'s trailer and
    truncation count, and its header unless the delta sets one.
    """
    applier = _Applier(before)
    for edit, canonical in zip(delta.edits, delta._canonical_lines(), strict=True):
        applier.apply(edit, edit.line if edit.line is not None else canonical)
    header = before.header if delta.header is None else delta.header
    return AXTree.from_nodes(
        applier.nodes(),
        header=header,
        trailer=before.trailer,
        truncated=before.truncated,
        dialect=before.dialect,
    )


# --- finding a delta ------------------------------------------------------------------------


def _unique_ids(tree: AXTree) -> dict[str, AXNode] | None:
    index = {node.id: node for node in tree.nodes if node.id is not None}
    return index if len(index) == len(tree.nodes) else None


def _increasing(positions: Sequence[int]) -> set[int]:
    """Indices of one longest strictly increasing subsequence of ``positions``."""
    tails: list[int] = []  # tails[k]: smallest tail value of an increasing run of length k+1
    tail_at: list[int] = []  # its index
    previous = [-1] * len(positions)
    for index, value in enumerate(positions):
        k = bisect.bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            tail_at.append(index)
        else:
            tails[k], tail_at[k] = value, index
        previous[index] = tail_at[k - 1] if k else -1
    chosen, index = set(), tail_at[-1] if tail_at else -1
    while index >= 0:
        chosen.add(index)
        index = previous[index]
    return chosen


def _kept(before: AXTree, after_index: dict[str, AXNode]) -> set[str]:
    """Ids whose element stays in place: same parent, kept siblings in the same order.

    Anything else (a moved element, one whose parent changed) is removed and inserted anew.
    """
    root = before.roots[0]
    kept = {root.id} if root.id is not None else set()
    order = {node.id: k for k, node in enumerate(after_index.values())}
    frontier = [root] if kept else []
    while frontier:
        parent = frontier.pop()
        staying = [
            child
            for child in parent.children
            if child.id in after_index
            and (after_parent := after_index[child.id].parent) is not None
            and after_parent.id == parent.id
        ]
        chosen = _increasing([order[child.id] for child in staying])
        for k, child in enumerate(staying):
            if k in chosen:
                kept.add(child.id)  # type: ignore[arg-type]
                frontier.append(child)
    return kept


def tree_delta(before: AXTree, after: AXTree, *, only_if_shorter: bool = True) -> Delta | None:
    """A delta that turns ``before`` into ``after``, or ``None`` where none is worth having.

    ``None`` when an element of either tree lacks an id or repeats one, either tree has
    structural errors, the roots differ, the header is dropped, the truncation differs,
    or (``only_if_shorter``) the delta's text is not shorter than ``after``'s. Otherwise
    ``apply_delta(before, delta).render() == after.render()`` up to the trailing whitespace,
    which is ``before``'s (checked before returning).
    """
    if before.errors or after.errors or not before.nodes or not after.nodes:
        return None
    before_index, after_index = _unique_ids(before), _unique_ids(after)
    if before_index is None or after_index is None or before.roots[0].id != after.roots[0].id:
        return None
    if (after.header is None and before.header is not None) or before.truncated != after.truncated:
        return None
    kept = _kept(before, after_index)
    edits: list[Edit] = [
        Remove(node.id)  # type: ignore[arg-type]
        for node in before.nodes
        if node.id not in kept and node.parent is not None and node.parent.id in kept
    ]
    edits += [
        Change(node.body())
        for node in after.nodes
        if node.id in kept and node.body() != before_index[node.id].body()  # type: ignore[index]
    ]
    edits += _insertions(after, kept)
    header = after.header if after.header != before.header else None
    delta = Delta(header, tuple(edits))
    if only_if_shorter and len(delta.render()) >= len(after.render()):
        return None
    try:
        applied = apply_delta(before, delta)
    except DeltaError:
        return None
    if applied.render().removesuffix(applied.trailer) != after.render().removesuffix(after.trailer):
        return None  # a line that does not read back as it was written
    return delta


def _insertions(after: AXTree, kept: set[str]) -> list[Insert]:
    """One insertion per run of new siblings under a kept parent, in document order."""
    position = {id(node): k for k, node in enumerate(after.nodes)}
    found: list[tuple[int, Insert]] = []
    for parent in after.nodes:
        if parent.id not in kept:
            continue
        anchor, inside, run = parent.id, True, []
        for child in [*parent.children, None]:
            if child is not None and child.id not in kept:
                run.append(child)
                continue
            if run:
                found.append((position[id(run[0])], _insert(anchor, inside, run)))
                run = []
            if child is not None:
                anchor, inside = child.id, False
    return [insert for _, insert in sorted(found, key=lambda item: item[0])]


def _insert(anchor: str | None, inside: bool, run: list[AXNode]) -> Insert:
    """The new siblings ``run`` and their subtrees, indented relative to the first."""
    base = run[0].depth
    lines = tuple("\t" * (node.depth - base) + node.body() for top in run for node in _subtree(top))
    return Insert(anchor or "", inside, lines)


def _subtree(node: AXNode) -> Iterator[AXNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))
