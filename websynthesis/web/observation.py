"""The observation layer: WebArena accessibility-tree text as an immutable tree.

The canonical observation is WebArena's text, one element per line, tab-indented by
depth, optionally headed by ``Tab 0 (current): title`` and a blank line::

    Tab 0 (current): Dashboard

    [1] RootWebArea 'Dashboard' focused: True
    \t[5] link "Women's Clothing"

:func:`parse_axtree` reads it (and BrowserGym's dialect) leniently and never raises;
``parse_axtree(text).render() == text`` for every well-formed WebArena tree, and
:attr:`AXTree.errors` lists every structural problem of a malformed one (empty errors
is the STR metric of WebSynthesis/WebEvolver). Rendering a tree with errors writes
the repaired tree: junk dropped, depths fixed, damaged lines in canonical form.

Trees and nodes are read-only; views (:meth:`AXTree.truncate`, :meth:`AXTree.highlight`)
and :meth:`AXTree.from_nodes` build new trees from detached copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .ax_lines import Dialect, ErrorKind, TreeError
from .ax_node import AXNode
from .ax_parse import (
    ParsedDocument,
    Tab,
    header_errors,
    link_nodes,
    missing_id_error,
    parse_document,
    parse_tabs,
    truncation_marker,
)
from .tree_compare import NodeChange, Score, TreeDiff, TreeMatch, compare_trees, diff_trees
from .tree_views import highlight_tree, truncate_tree

__all__ = [
    "INTERACTIVE_ROLES",
    "AXNode",
    "AXTree",
    "Dialect",
    "ErrorKind",
    "NodeChange",
    "Score",
    "Tab",
    "TreeDiff",
    "TreeError",
    "TreeMatch",
    "compare_trees",
    "diff_trees",
    "parse_axtree",
]

# Roles an agent can click, type into or select. ``img`` is left out: a clickable image
# sits inside a link, which is the element to act on. ``DisclosureTriangle`` is
# Chromium's role for <summary>, which toggles its <details>.
INTERACTIVE_ROLES = frozenset({
    "button", "checkbox", "combobox", "DisclosureTriangle", "link", "listbox", "menu",
    "menubar", "menuitem", "menuitemcheckbox", "menuitemradio", "option", "radio",
    "scrollbar", "searchbox", "slider", "spinbutton", "switch", "tab", "textbox", "treeitem",
})  # fmt: skip


def parse_axtree(text: str) -> AXTree:
    """Parse observation text in either dialect; never raises (see :class:`AXTree`)."""
    document = parse_document(text)
    well_formed = not document.errors and document.dialect is Dialect.WEBARENA
    return AXTree(document, text if well_formed else None)


class AXTree:
    """A parsed or assembled accessibility tree. Build it with :func:`parse_axtree` or
    :meth:`from_nodes`; the constructor takes an already linked document.

    ``nodes`` is in document order; ``dialect`` says which format the text was in;
    ``truncated`` counts elements a truncation cut off (0 if none); ``trailer`` is the
    whitespace after the last line (usually ``""`` or ``"\\n"``), kept for round trips.
    """

    __slots__ = ("_document", "_index", "_rendered")

    def __init__(self, document: ParsedDocument, rendered: str | None = None) -> None:
        self._document = document
        self._rendered = rendered
        self._index: dict[str, AXNode] | None = None

    @classmethod
    def from_nodes(
        cls,
        nodes: Iterable[AXNode],
        *,
        header: str | None = None,
        trailer: str = "",
        truncated: int = 0,
        dialect: Dialect = Dialect.WEBARENA,
    ) -> AXTree:
        """A tree of copies of ``nodes`` placed by their ``depth``, checked like parsed text.

        Unchanged nodes from a parsed tree keep their raw text; others are canonical.
        Error line numbers refer to :meth:`render`'s output.
        """
        first_line = 3 if header is not None else 1
        copies = [node.relocated(node.depth, first_line + i) for i, node in enumerate(nodes)]
        errors = [] if header is None else header_errors(header, 1)
        errors += link_nodes(copies)
        if dialect is Dialect.WEBARENA:
            errors += [missing_id_error(node.line_no) for node in copies if node.id is None]
        errors.sort(key=lambda error: error.line or 0)
        return cls(ParsedDocument(copies, header, errors, dialect, trailer, truncated))

    @property
    def nodes(self) -> list[AXNode]:
        """All elements in document order (a shared list: do not modify)."""
        return self._document.nodes

    @property
    def roots(self) -> list[AXNode]:
        """Depth-0 elements: one in a valid tree, several in a damaged one."""
        return [node for node in self._document.nodes if node.parent is None]

    @property
    def header(self) -> str | None:
        """The raw ``Tab 0 (current): title`` line, if the text had one."""
        return self._document.header

    @property
    def tabs(self) -> list[Tab]:
        header = self._document.header
        return (parse_tabs(header) or []) if header is not None else []

    @property
    def title(self) -> str | None:
        """The current tab's title, from the header."""
        return next((tab.title for tab in self.tabs if tab.current), None)

    @property
    def errors(self) -> list[TreeError]:
        """Structural problems in line order; empty means structurally valid (STR)."""
        return self._document.errors

    @property
    def is_valid(self) -> bool:
        return not self._document.errors

    @property
    def dialect(self) -> Dialect:
        return self._document.dialect

    @property
    def truncated(self) -> int:
        return self._document.truncated

    @property
    def trailer(self) -> str:
        return self._document.trailer

    def get(self, node_id: str) -> AXNode | None:
        """The first element with this id (ids are unique in a valid tree)."""
        if self._index is None:  # built on demand: most hot-path trees are never queried
            nodes = self._document.nodes
            self._index = {node.id: node for node in reversed(nodes) if node.id is not None}
        return self._index.get(node_id)

    def interactive(self) -> list[AXNode]:
        """Elements an agent can act on: an interactive role, an id, and not disabled."""
        return [
            node
            for node in self._document.nodes
            if node.role in INTERACTIVE_ROLES
            and node.id is not None
            and node.props.get("disabled") != "True"
        ]

    def render(self) -> str:
        """The WebArena text: the source itself when it was well-formed, else canonical."""
        if self._rendered is None:
            document = self._document
            lines = [node.render() for node in document.nodes]
            if document.header is not None:  # the blank line separates it from elements
                lines[:0] = [document.header, ""] if lines else [document.header]
            if document.truncated:
                lines.append(truncation_marker(document.truncated))
            self._rendered = "\n".join(lines) + document.trailer
        return self._rendered

    def truncate(
        self,
        max_chars: int | None = None,
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> AXTree:
        """This tree cut to fit a budget; see :func:`.tree_views.truncate_tree`."""
        return truncate_tree(self, max_chars, max_tokens, count_tokens)

    def highlight(self, node_id: str, siblings: int = 4, max_children: int = 20) -> AXTree:
        """The neighbourhood of one element; see :func:`.tree_views.highlight_tree`."""
        return highlight_tree(self, node_id, siblings, max_children)

    def __len__(self) -> int:
        return len(self._document.nodes)

    def __iter__(self) -> Iterator[AXNode]:
        return iter(self._document.nodes)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        document = self._document
        return (
            f"AXTree({len(document.nodes)} nodes, dialect={document.dialect.value}, "
            f"{len(document.errors)} errors)"
        )
