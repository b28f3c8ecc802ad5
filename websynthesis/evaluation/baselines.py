"""A policy that needs no model: a uniform random click among the page's clickable elements.

Why it is a baseline beside the untrained policy: the untrained policy under the grammar is
a random *valid action* of the declared action set, so it also types, presses keys and
stops; a random click is what a task's layout alone gives. A trained policy must beat both
on the same held-out seeds to have learned something about the task, not about the page.

"Clickable" is read from the tree, as a model would read it: elements (lines with an element
id; text lines and page roots have none of their own) whose role is an interactive widget's
(:data:`CLICKABLE_ROLES`). A page with none offers every element instead; a page with no
element at all gets ``stop []``. The draw is seeded by the step (:func:`stable_seed`), so a
rerun clicks the same elements.
"""

from __future__ import annotations

import random
from typing import Any

from websynthesis.env.observe import is_element_id
from websynthesis.roles.parsing import Decision
from websynthesis.web.actions import Action, ActionKind
from websynthesis.web.observation import AXTree

# The interactive widget roles of WAI-ARIA that Chrome reports, plus img (WebArena clicks
# product images).
CLICKABLE_ROLES = frozenset(
    {
        "button", "link", "checkbox", "radio", "switch", "tab", "menuitem",
        "menuitemcheckbox", "menuitemradio", "option", "treeitem", "gridcell",
        "textbox", "searchbox", "combobox", "spinbutton", "listbox", "slider", "img",
    }
)  # fmt: skip
THOUGHT = "A random click (baseline)."


def clickable_ids(tree: AXTree) -> list[str]:
    """Ids of the page's clickable elements in page order (see the module docstring)."""
    elements = [n for n in tree.nodes if n.id is not None and is_element_id(n.id)]
    clickable = [n.id for n in elements if n.role.casefold() in CLICKABLE_ROLES]
    return clickable or [n.id for n in elements]  # type: ignore[misc]


class RandomClick:
    """Chooses ``click [id]`` uniformly among :func:`clickable_ids`, seeded per step."""

    def decide(self, tree: AXTree, seed: int) -> Decision:
        ids = clickable_ids(tree)
        if not ids:
            return Decision(THOUGHT, Action(ActionKind.STOP, text=""))
        return Decision(THOUGHT, Action(ActionKind.CLICK, target=random.Random(seed).choice(ids)))

    def __repr__(self) -> str:
        return "RandomClick()"


def baseline(name: str) -> Any:
    """The policy named by ``eval.policy``: ``None`` for ``model`` (the policy role)."""
    if name == "model":
        return None
    if name == "random_click":
        return RandomClick()
    raise ValueError(f"eval.policy must be model or random_click, not {name!r}")
