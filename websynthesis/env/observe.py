"""BrowserGym's observation dict as the canonical tree text the models read and write.

``flatten_axtree_to_str`` prints BrowserGym's dialect; :func:`parse_axtree` reads it and
renders WebArena's. Three gaps are closed first:

- Chromium (since ~v120) lists ``InlineTextBox`` nodes, each repeating its text: dropped.
- Text nodes and document roots have no bid (BrowserGym tags DOM elements only), so their
  lines would have no id, which WebArena's format (and the STR metric) counts as broken.
  :func:`assign_text_ids` gives them ids no bid can take (bids start with a digit or a
  lower-case frame letter), derived from the page's structure so that the same page gets the
  same ids in every browser session (reset and replay depend on it) and a change elsewhere
  does not renumber them: ``TB15`` is the second bid-less node under element ``15``;
  ``RA0`` is the first with no element above it (the page's root), ``RAa0`` under iframe
  ``a``. Chromium's own AX node ids would be shorter but differ between sessions.
- The parts of a form control that Chromium builds itself (a date input's month, day and year
  spinbuttons and its picker button; a time input's fields) sit in a shadow tree no script
  can tag, and BrowserGym hands them their host's bid: ``enter-date`` and ``enter-time``
  listed five lines ``[14]``, a page the parser rejects (``duplicate_id``) and synthesis
  skips. A bid already taken by a node before it in document order is therefore one the
  node inherited: it gets a structural id as a bid-less node does (``TA14``), so an action
  on it goes to the element that owns the bid (:func:`owner_of_text_id`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from browsergym.utils.obs import IGNORED_AXTREE_ROLES, flatten_axtree_to_str

from websynthesis.web.observation import parse_axtree

IGNORED_ROLES = {*IGNORED_AXTREE_ROLES, "InlineTextBox"}
_SPACE = re.compile(r"\s+")
_FRAME_PREFIX = re.compile(r"[A-Za-z]*")


def observation_fields(obs: dict[str, Any]) -> dict[str, Any]:
    """What an :class:`~websynthesis.env.base.Observation` needs, as plain picklable values.

    ``text`` starts with the ``Tab 0 (current): title`` header, lists every element, and
    satisfies ``parse_axtree(text).render() == text``.
    """
    active = int(obs["active_page_index"][0])
    header = " | ".join(
        f"Tab {i}{' (current)' if i == active else ''}: {_SPACE.sub(' ', title).strip()}"
        for i, title in enumerate(obs["open_pages_titles"])
    )
    flat = flatten_axtree_to_str(assign_text_ids(obs["axtree_object"]), ignored_roles=IGNORED_ROLES)
    # Twice: the first render turns BrowserGym's dialect into WebArena's; the second is the
    # text of the tree the caller will parse, so that its render() is the text exactly.
    text = parse_axtree(parse_axtree(f"{header}\n\n{flat}").render()).render()
    return {
        "text": text,
        "url": obs["url"],
        "goal": obs["goal"],
        "open_urls": tuple(obs["open_pages_urls"]),
        "last_action_error": obs["last_action_error"] or None,
    }


def assign_text_ids(axtree: dict[str, Any]) -> dict[str, Any]:
    """Set ``browsergym_id`` on every bid-less node reachable from the root, and on every
    node that repeats a bid an earlier node holds (in place).

    Nodes are numbered in document order per nearest element above them (see the module
    docstring); each node is visited once, frames included (BrowserGym links an iframe's
    node to its document's root).
    """
    nodes = {node["nodeId"]: node for node in axtree["nodes"]}
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    bids: set[str] = set()
    stack = [(axtree["nodes"][0], "")] if axtree["nodes"] else []
    while stack:
        node, owner = stack.pop()
        if node["nodeId"] in seen:
            continue
        seen.add(node["nodeId"])
        bid = node.get("browsergym_id")
        if bid is None or bid in bids:  # no bid, or its host's (a control's own parts)
            counts[owner] += 1
            node["browsergym_id"] = _text_id(owner, counts[owner])
        else:
            bids.add(bid)
            owner = bid
        children = [nodes[child] for child in node.get("childIds", ()) if child in nodes]
        stack.extend((child, owner) for child in reversed(children))
    return axtree


_TEXT_ID = re.compile(r"T[A-Z]+(.+)")


def owner_of_text_id(node_id: str) -> str | None:
    """The bid of the element a text line belongs to (``TB15`` -> ``15``), else ``None``.

    WebArena lets an agent click any line, a text line included (the click lands on the
    text's box, i.e. inside its element); BrowserGym can only act on elements, so actions on
    a text line are sent to its element. Page roots (``R…``) have no element to act on.
    """
    match = _TEXT_ID.fullmatch(node_id)
    return match.group(1) if match else None


_ELEMENT_ID = re.compile(r"[a-z]*[0-9]+")


def is_element_id(node_id: str) -> bool:
    """Whether ``node_id`` names an element (a bid, or a WebArena DOM id), not a text line
    (``TB15``) or a page root (``RA0``), which BrowserGym cannot act on by themselves."""
    return _ELEMENT_ID.fullmatch(node_id) is not None


def _text_id(owner: str, index: int) -> str:
    """``T`` + the index in letters + the element's bid; ``R`` when no element is above."""
    letters = ""
    while index:  # bijective base 26: 1 -> A, 26 -> Z, 27 -> AA
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    frame = _FRAME_PREFIX.match(owner).group()
    if owner[len(frame) :]:
        return f"T{letters}{owner}"
    return f"R{letters}{frame}0"
