"""One accessibility-tree element (:class:`AXNode`) and the grammar of its text line.

A WebArena line is ``[id] role 'name' key: value key2: value2`` where the name token
is Python's ``repr()`` of the accessible name. A parsed node keeps the raw text of its
line (minus indentation) because the corpus is not quite canonical (it holds raw
non-printable characters that ``repr()`` would escape, double-quoted names without an
apostrophe, ...), and exact round trips are what downstream training data needs. Nodes
built or edited in code have no raw text and render canonically.

Nodes are read-only: every public attribute is a property, and edits go through
:meth:`AXNode.replace`, which returns a detached copy. The ``props`` dict and the
``children`` list are shared, not copied, for speed: treat them as read-only too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ID_PATTERN = r"[^\s\[\]]+"
ROLE_PATTERN = r"[^\s'\",\[\]]+"
KEY_PATTERN = r"[A-Za-z_][\w-]*"
# Unrolled-loop string literals: much faster in ``re`` than ``(?:[^'\\]|\\.)*``.
SINGLE_QUOTED = r"'[^'\\]*(?:\\.[^'\\]*)*'"
DOUBLE_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
QUOTED = rf"(?:{SINGLE_QUOTED}|{DOUBLE_QUOTED})"

# The whole hot path: one fullmatch per well-formed WebArena line.
# Groups: indentation, id, role, quoted name, props tail.
WEBARENA_LINE = re.compile(
    rf"(\t*)(?:\[({ID_PATTERN})\] )?({ROLE_PATTERN}) ({QUOTED})((?: {KEY_PATTERN}: .*)?)"
)
_ID_RE = re.compile(ID_PATTERN)
_ROLE_RE = re.compile(ROLE_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)
_PROP_SPLIT = re.compile(rf" ({KEY_PATTERN}): ")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"',
    "a": "\a", "b": "\b", "f": "\f", "v": "\v", "0": "\0",
}  # fmt: skip


def _unescape_one(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:
        value = int(code[1:], 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    return _SIMPLE_ESCAPES.get(code, match.group(0))


def decode_quoted(token: str) -> str:
    """Decode a quoted Python string literal without ``ast`` (hot path, never raises).

    Unknown escapes are kept verbatim, as Python itself does.
    """
    inner = token[1:-1]
    return _ESCAPE.sub(_unescape_one, inner) if "\\" in inner else inner


def decode_unterminated(text: str) -> str:
    """Decode the body of a literal whose closing quote is missing (a truncated line)."""
    return _ESCAPE.sub(_unescape_one, text) if "\\" in text else text


def parse_webarena_props(tail: str) -> dict[str, str]:
    """Split ``' key: value key2: some words'`` into a dict.

    Values may contain spaces, so a value runs until the next `` key: ``.
    """
    parts = _PROP_SPLIT.split(tail)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _one_line(value: str) -> str:
    # WebArena writes prop values raw; a line break (which it never emits) would split
    # the element in two, so it becomes a space.
    return value.replace("\r", " ").replace("\n", " ") if "\n" in value or "\r" in value else value


def _check_token(kind: str, value: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ValueError(f"invalid {kind} for an accessibility-tree line: {value!r}")


class AXNode:
    """One element of an accessibility tree; see the module docstring for the contract.

    ``id`` is ``None`` for id-less lines (BrowserGym prints some StaticText that way).
    ``depth``, ``parent`` and ``children`` describe the node's place in the one tree that
    holds it; a node built with the constructor is detached until
    :meth:`AXTree.from_nodes <websynthesis.web.observation.AXTree.from_nodes>` copies it
    into a tree. Nodes compare by identity (they are tree positions); compare fields or
    :meth:`render` for value equality.
    """

    __slots__ = (
        "_body", "_children", "_depth", "_id", "_line_no", "_name",
        "_parent", "_props", "_role", "_tail",
    )  # fmt: skip

    def __init__(
        self,
        id: str | None,
        role: str,
        name: str = "",
        props: Mapping[str, object] | None = None,
        depth: int = 0,
    ) -> None:
        if id is not None:
            _check_token("id", id, _ID_RE)
        _check_token("role", role, _ROLE_RE)
        if not isinstance(name, str):
            raise ValueError(f"name must be a str, not {type(name).__name__}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, not {depth}")
        clean: dict[str, str] = {}
        for key, value in (props or {}).items():
            _check_token("prop key", key, _KEY_RE)
            clean[key] = str(value)
        self._init(id, role, name, clean, None, depth, None, None)

    def _init(
        self,
        id: str | None,
        role: str,
        name: str,
        props: dict[str, str] | None,
        tail: str | None,
        depth: int,
        body: str | None,
        line_no: int | None,
    ) -> None:
        self._id = id
        self._role = role
        self._name = name
        self._props = props
        self._tail = tail
        self._depth = depth
        self._body = body
        self._line_no = line_no
        self._parent: AXNode | None = None
        self._children: list[AXNode] | None = None  # most nodes are leaves: save the list

    @classmethod
    def from_parts(
        cls,
        id: str | None,
        role: str,
        name: str,
        *,
        props: dict[str, str] | None = None,
        tail: str | None = None,
        depth: int = 0,
        body: str | None = None,
        line_no: int | None = None,
    ) -> AXNode:
        """Build a node from already-validated parser output, skipping the checks.

        Exactly one of ``props`` (a dict) or ``tail`` (raw WebArena props text, parsed
        on first access) should be given. ``body`` is the raw line text to render while
        the node is unchanged.
        """
        node = cls.__new__(cls)
        node._init(id, role, name, props, tail, depth, body, line_no)
        return node

    @property
    def id(self) -> str | None:
        return self._id

    @property
    def role(self) -> str:
        return self._role

    @property
    def name(self) -> str:
        """The decoded accessible name (escapes such as ``\\ue604`` resolved)."""
        return self._name

    @property
    def props(self) -> dict[str, str]:
        """Properties as strings, in line order; parsed lazily since most go unread."""
        if self._props is None:
            self._props = parse_webarena_props(self._tail) if self._tail else {}
        return self._props

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def parent(self) -> AXNode | None:
        return self._parent

    @property
    def children(self) -> list[AXNode]:
        return self._children if self._children is not None else []

    @property
    def line_no(self) -> int | None:
        """1-based line of the source text this node was parsed from, if any."""
        return self._line_no

    def body(self) -> str:
        """The line without its indentation: the raw text if parsed, else canonical."""
        if self._body is None:
            self._body = self._canonical_body()
        return self._body

    def render(self) -> str:
        """The node's line, indented by its depth."""
        return "\t" * self._depth + self.body()

    def _canonical_body(self) -> str:
        head = f"{self._role} {self._name!r}"
        if self._id is not None:
            head = f"[{self._id}] {head}"
        props = self.props
        if not props:
            return head
        return head + "".join(f" {key}: {_one_line(value)}" for key, value in props.items())

    def replace(self, **changes: object) -> AXNode:
        """A detached copy with some of ``id, role, name, props, depth`` changed.

        The raw line text survives a pure depth change (it excludes indentation);
        any other actual change makes the copy render canonically.
        """
        unknown = set(changes) - {"id", "role", "name", "props", "depth"}
        if unknown:
            raise TypeError(f"replace() got unexpected fields: {sorted(unknown)}")
        depth = changes.pop("depth", self._depth)
        fields: dict[str, object] = {
            "id": self._id, "role": self._role, "name": self._name, "props": self.props,
        }  # fmt: skip
        if all(fields[key] == value for key, value in changes.items()):
            return self.relocated(depth)  # type: ignore[arg-type]
        fields.update(changes)
        return AXNode(depth=depth, **fields)  # type: ignore[arg-type]

    def relocated(self, depth: int, line_no: int | None = None) -> AXNode:
        """A detached copy at ``depth`` that keeps the raw text: what tree views are made of."""
        return AXNode.from_parts(
            self._id, self._role, self._name, props=self._props, tail=self._tail,
            depth=depth, body=self._body, line_no=line_no,
        )  # fmt: skip

    def ancestors(self) -> list[AXNode]:
        """Ancestors from the root down to the parent."""
        chain: list[AXNode] = []
        node = self._parent
        while node is not None:
            chain.append(node)
            node = node._parent
        chain.reverse()
        return chain

    def _attach(self, parent: AXNode | None, depth: int) -> None:
        """Link this node under ``parent`` at ``depth``: for this package's tree builder only."""
        self._depth = depth
        self._parent = parent
        if parent is not None:
            if parent._children is None:
                parent._children = [self]
            else:
                parent._children.append(self)

    def __repr__(self) -> str:
        return f"AXNode({self.body()!r}, depth={self._depth})"
