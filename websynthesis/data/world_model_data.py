"""World-model training examples: earlier actions + page + action -> the whole next page.

The prompt is the world model's inference prompt, built by ``Role("world_model").messages``
with the student's own role settings (template, ``observation_chars``), so the model is
trained on exactly the question search asks it. The target is the next page's tree inside
``<a11y>…</a11y>``: what the role's grammar allows and its parser reads back.

The world-model prompt tells the model to keep the ids of elements that stay on the page.
Each example therefore counts its *renumbered* elements: elements present in both pages with
the same role and name but under another id. A real navigation legitimately gives a new page
new ids (WebArena ids are the browser's DOM node ids), so such transitions are kept and counted
by default; ``drop_renumbered`` leaves them out (useful for imagined transitions).

Left out, and counted in ``counts`` under ``dropped/<reason>``: a page with structural errors
(``malformed``), a renumbered transition when asked, and a repeat of an example already built
(``duplicate``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from websynthesis.data.chat import ChatExample
from websynthesis.data.transitions import Transition
from websynthesis.models.prompts import WorldModelInput
from websynthesis.models.roles import Role
from websynthesis.web.observation import AXTree, compare_trees, parse_axtree

MIX = "world_model"


def target_text(tree: AXTree) -> str:
    """The assistant turn for a next page: its tree, whole, between ``<a11y>`` tags."""
    return f"<a11y>\n{tree.render().rstrip()}\n</a11y>"


def renumbered_elements(before: AXTree, after: AXTree) -> int:
    """Elements of ``after`` that match one of ``before`` by role and name, but not by id."""
    match = compare_trees(after, before)
    return match.without_id.matched - match.with_id.matched


def world_model_examples(
    transitions: Iterable[Transition],
    role: Role,
    *,
    drop_renumbered: bool = False,
    counts: Counter[str],
) -> list[ChatExample]:
    """One example per usable transition, in order (see the module docstring)."""
    if role.name != MIX:
        raise ValueError(f"world-model examples need the world_model role, not {role.name!r}")
    examples, seen = [], set()
    for t in transitions:
        before, after = parse_axtree(t.observation), parse_axtree(t.next_observation)
        if before.errors or after.errors or not before.nodes or not after.nodes:
            counts["dropped/malformed"] += 1
            continue
        renumbered = renumbered_elements(before, after)
        counts["renumbered"] += renumbered > 0
        if renumbered and drop_renumbered:
            counts["dropped/renumbered"] += 1
            continue
        prompt = role.messages(WorldModelInput(before, t.action, t.history))
        target = target_text(after)
        key = (*(m["content"] for m in prompt), target)
        if key in seen:
            counts["dropped/duplicate"] += 1
            continue
        seen.add(key)
        meta = {"task_id": t.task_id, "source": t.source, "imagined": t.imagined}
        meta |= {"action": t.action.to_string(), "renumbered": renumbered}
        examples.append(ChatExample((*prompt, {"role": "assistant", "content": target}), meta))
    counts["kept"] += len(examples)
    return examples
