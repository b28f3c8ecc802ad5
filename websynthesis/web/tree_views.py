"""Smaller trees cut from a bigger one: budget truncation and the acted-on highlight.

Both return new, structurally valid trees (built with ``AXTree.from_nodes``) rather
than text, so callers can keep querying them; nodes keep their raw text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .ax_parse import truncation_marker

if TYPE_CHECKING:
    from .observation import AXTree


def truncate_tree(
    tree: AXTree,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> AXTree:
    """Cut ``tree`` so that its rendering fits ``max_chars`` and/or ``max_tokens``.

    Elements are dropped from the end of the document: the last subtrees go first, and
    a subtree cut part-way keeps its head and loses its later descendants, so every
    kept element keeps all its ancestors (a document-order prefix is always a tree). The
    cut tree ends with a marker line saying how many elements were dropped, which
    :func:`~websynthesis.web.observation.parse_axtree` reads back into ``truncated``.
    The header and root are always kept, so a budget smaller than those is exceeded.
    Returns ``tree`` itself when it already fits.
    """
    if max_chars is None and max_tokens is None:
        raise ValueError("truncate() needs max_chars or max_tokens")
    if max_tokens is not None and count_tokens is None:
        raise ValueError("max_tokens needs a count_tokens function")
    if len(tree.nodes) <= 1 or not _over(tree.render(), max_chars, max_tokens, count_tokens):
        return tree
    lines = [node.render() for node in tree.nodes]
    keep = len(lines) - 1
    if max_chars is not None:
        keep = _chars_limit(tree, lines, max_chars)
    if max_tokens is not None and count_tokens is not None:
        keep = _tokens_limit(tree, lines, keep, max_tokens, count_tokens)
    return tree.from_nodes(
        tree.nodes[:keep],
        header=tree.header,
        trailer=tree.trailer,
        truncated=tree.truncated + len(lines) - keep,
        dialect=tree.dialect,
    )


def _over(
    text: str,
    max_chars: int | None,
    max_tokens: int | None,
    count_tokens: Callable[[str], int] | None,
) -> bool:
    if max_chars is not None and len(text) > max_chars:
        return True
    return max_tokens is not None and count_tokens is not None and count_tokens(text) > max_tokens


def _prefix_text(tree: AXTree, lines: list[str], keep: int) -> str:
    """What the tree cut to ``keep`` elements renders as, without building it."""
    head = [] if tree.header is None else [tree.header, ""]
    marker = truncation_marker(tree.truncated + len(lines) - keep)
    return "\n".join([*head, *lines[:keep], marker]) + tree.trailer


def _chars_limit(tree: AXTree, lines: list[str], max_chars: int) -> int:
    """The most leading elements whose cut rendering fits ``max_chars`` (at least 1)."""
    fixed = len(tree.trailer) + (len(tree.header) + 2 if tree.header is not None else 0)
    best, used = 1, fixed
    for keep, line in enumerate(lines[:-1], start=1):
        used += len(line) + 1  # the line and its newline; this outgrows marker shrinkage
        marker = truncation_marker(tree.truncated + len(lines) - keep)
        if used + len(marker) > max_chars:
            break
        best = keep
    return best


def _tokens_limit(
    tree: AXTree, lines: list[str], upper: int, max_tokens: int, count: Callable[[str], int]
) -> int:
    """Binary search for the most leading elements that fit ``max_tokens`` (at least 1).

    Token counts of prefixes are monotone in practice; where a tokenizer breaks that,
    the answer still fits, it may just not be the longest that does.
    """
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if count(_prefix_text(tree, lines, middle)) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return low


def highlight_tree(tree: AXTree, node_id: str, siblings: int = 4, max_children: int = 20) -> AXTree:
    """The context an action history shows for the element ``node_id`` acted on.

    Keeps its ancestors, itself, its first ``max_children`` children, and its
    ``siblings`` nearest siblings by document position (ties go to the earlier one).
    Position, not numeric id, decides nearness: ids may be ``a51``. Raises
    ``KeyError`` if no element has that id.
    """
    if siblings < 0 or max_children < 0:
        raise ValueError("siblings and max_children must be >= 0")
    node = tree.get(node_id)
    if node is None:
        raise KeyError(node_id)
    ancestors = node.ancestors()
    family = node.parent.children if node.parent is not None else tree.roots
    position = next(i for i, member in enumerate(family) if member is node)
    nearest = sorted(range(len(family)), key=lambda i: (abs(i - position), i))
    depth = len(ancestors)
    kept = [ancestor.relocated(level) for level, ancestor in enumerate(ancestors)]
    for index in sorted(nearest[: siblings + 1]):
        kept.append(family[index].relocated(depth))
        if index == position:
            kept += [child.relocated(depth + 1) for child in node.children[:max_children]]
    return tree.from_nodes(kept, dialect=tree.dialect)
