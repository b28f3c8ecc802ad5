"""World-model training examples: earlier actions + page + action -> the next page.

The prompt is the world model's inference prompt, built by ``Role("world_model").messages``
with the student's own role settings (template, ``observation_chars``), so the model is
trained on exactly the question search asks it. The target follows the role's template
family too: the next page's tree inside ``<a11y>…</a11y>`` (the default), or, for a family
that answers with changes (``world_model_delta``), the ``<changes>`` block that turns the
current page into the next one, or the whole page where no shorter change exists (a
navigation). Either way it is what the role's grammar allows, and every target is read back
through the role's own parser: one that does not give exactly the real next page is left
out, since training on it would teach a page the parser then does not produce.

The world-model prompt tells the model to keep the ids of elements that stay on the page.
Each example therefore counts its *renumbered* elements: elements present in both pages with
the same role and name but under another id. A real navigation legitimately gives a new page
new ids (WebArena ids are the browser's DOM node ids), so such transitions are kept and counted
by default; ``drop_renumbered`` leaves them out (useful for imagined transitions).

Left out, and counted in ``counts`` under ``dropped/<reason>``: a page with structural errors
(``malformed``), a renumbered transition when asked, a target that does not read back
(``unreadable_target``), and a repeat of an example already built (``duplicate``). A changes
family also counts its targets by form, ``target/changes`` and ``target/page``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from websynthesis.data.chat import ChatExample
from websynthesis.data.transitions import Transition
from websynthesis.roles.client import Role, answers_with_changes
from websynthesis.roles.prompts import WorldModelInput
from websynthesis.web.observation import AXTree, compare_trees, parse_axtree
from websynthesis.web.tree_delta import tree_delta

MIX = "world_model"


def target_text(tree: AXTree) -> str:
    """The assistant turn for a next page: its tree, whole, between ``<a11y>`` tags."""
    return f"<a11y>\n{tree.render().rstrip()}\n</a11y>"


def change_target(before: AXTree, after: AXTree) -> str:
    """The assistant turn of a changes family: the ``<changes>`` block from ``before`` to
    ``after`` where one exists and is shorter than the page, else the whole page."""
    delta = tree_delta(before, after)
    return delta.render() if delta is not None else target_text(after)


def role_target(role: Role, before: AXTree, after: AXTree) -> str:
    """The answer ``role`` is trained to give for ``before`` -> ``after``: its family's form."""
    return (
        change_target(before, after) if answers_with_changes(role.settings) else target_text(after)
    )


def reads_back(role: Role, target: str, question: WorldModelInput, after: AXTree) -> bool:
    """Whether ``role``'s parser reads ``target`` as exactly ``after`` (its trailing
    whitespace aside: a parsed answer has none)."""
    parsed = role.parse(target, question)
    page = after.render().removesuffix(after.trailer)
    return parsed.ok and parsed.value is not None and parsed.value.render() == page


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
    changes = answers_with_changes(role.settings)
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
        question = WorldModelInput(before, t.action, t.history)
        prompt = role.messages(question)
        target = role_target(role, before, after)
        key = (*(m["content"] for m in prompt), target)
        if key in seen:
            counts["dropped/duplicate"] += 1
            continue
        if not reads_back(role, target, question, after):
            counts["dropped/unreadable_target"] += 1
            continue
        seen.add(key)
        meta = {"task_id": t.task_id, "source": t.source, "imagined": t.imagined}
        meta |= {"action": t.action.to_string(), "renumbered": renumbered}
        if changes:
            form = "page" if target.startswith("<a11y>") else "changes"
            counts[f"target/{form}"] += 1
            meta["target"] = form
        examples.append(ChatExample((*prompt, {"role": "assistant", "content": target}), meta))
    counts["kept"] += len(examples)
    return examples
