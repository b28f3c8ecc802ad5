"""The MiniWoB++ task suite whose text observations differ by seed (``env=miniwob_suite``).

A seed that only moves elements around changes nothing a text agent sees: click-test,
click-test-2 and focus-text show the same goal and the same accessibility tree under every
seed, so a model that scores well on them may have memorised one page. Success on the tasks
below needs the policy to read what the seed changed (the button to click, the word to
type, the option to select), so it measures generalisation to unseen instances.

Each task is listed with what it exercises and what varies per seed, as observed under
:data:`CHECK_SEEDS`; ``tests/test_task_suite.py`` checks on live pages that the first
observations (goal and tree, element ids removed: :func:`id_free_observation`) of those
seeds are pairwise different, and ``docs/task_suite.md`` lists the rejected tasks and why.
Tasks were chosen for what they exercise, not for how well any model does on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Skill = Literal["click", "type", "select", "navigate"]
"""What a task makes the policy do: click an element, type text into a field, choose an
option of a ``<select>`` (``select_option``), or act to reveal content the first
observation does not show (switch tabs)."""

CHECK_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
"""The seeds whose first observations are checked to be pairwise different."""


@dataclass(frozen=True)
class SuiteTask:
    """One MiniWoB++ task of the suite.

    ``steps`` is (fewest, most) actions of the shortest solution over seeds, for instance
    (1, 7) for click-checkboxes, where a seed asks to tick from none to all six boxes
    before Submit. ``varies`` says what the seed changes in the text the policy reads.
    """

    name: str
    exercises: tuple[Skill, ...]
    steps: tuple[int, int]
    varies: str

    @property
    def needs_typing(self) -> bool:
        return "type" in self.exercises

    @property
    def multi_step(self) -> bool:
        """Whether every seed needs more than one action."""
        return self.steps[0] > 1


MINIWOB_SUITE: tuple[SuiteTask, ...] = (
    SuiteTask(
        "click-button",
        ("click",),
        (1, 1),
        "the goal's button label; the other buttons, text fields and filler text, and their order",
    ),
    SuiteTask(
        "click-tab-2",
        ("click", "navigate"),
        (1, 3),
        "the goal's link word; the three tabs' text and which words are links (the target is "
        "often in a tab the first observation does not show)",
    ),
    SuiteTask(
        "click-option",
        ("click",),
        (2, 2),
        "the number of radio buttons (2-6), their labels and which one the goal names",
    ),
    SuiteTask(
        "click-checkboxes",
        ("click",),
        (1, 7),
        "the number of checkboxes (2-6), their labels and which of them (none to all) the "
        "goal names",
    ),
    SuiteTask(
        "choose-list",
        ("select", "click"),
        (1, 2),
        "the list (people's names or countries, 3-9 options) and the option the goal names",
    ),
    SuiteTask(
        "enter-text",
        ("type", "click"),
        (2, 2),
        "the word to type, in the goal (the tree is the same under every seed)",
    ),
    SuiteTask(
        "login-user",
        ("type", "click"),
        (3, 3),
        "the username and password to type, in the goal (the tree is the same under every seed)",
    ),
    SuiteTask(
        "use-autocomplete",
        ("type", "click"),
        (2, 3),
        "the country's prefix (and suffix, in most seeds) in the goal (the tree is the same "
        "under every seed; suggestions appear after typing)",
    ),
)
"""The suite, in the order of ``conf/env/miniwob_suite.yaml``'s ``tasks``."""


def suite_names() -> list[str]:
    """The suite's task names, as ``env.tasks`` takes them."""
    return [task.name for task in MINIWOB_SUITE]


_LINE_ID = re.compile(r"^(\t*)\[[^\]\s]*\] ", re.MULTILINE)


def id_free_observation(goal: str, tree_text: str) -> str:
    """The goal, a blank line, and the tree text with every line's leading ``[id]`` removed.

    Ids number the page's elements in document order, so they can change with a seed that
    changes nothing the policy reads; two observations equal without ids are the same
    instance as far as a text agent can tell.
    """
    lines = _LINE_ID.sub(r"\1", tree_text)
    return f"{goal}\n\n{lines}"
