"""Policy training examples with checked targets, and the page as the policy's prompt shows it.

Every source of behaviour-cloning data (a searched tree's valuable and rollback steps, a
successful live episode, an imagined trajectory of co-evolution) turns a step into an
example through :func:`policy_example`, so the same checks hold for all of them: the target
(``format_response(thought, action)``) reads back through the policy's own parser to an
equivalent action, valid on the page *as the prompt shows it* (:func:`visible_page`: cut to
the role's observation budget). Search validates proposals against the same view
(:func:`check_visible`): an id cut from the prompt can be neither proposed nor trained on.
"""

from __future__ import annotations

from typing import Any

from websynthesis.data.chat import ChatExample
from websynthesis.roles.client import Role
from websynthesis.roles.parsing import failure_label
from websynthesis.roles.prompts import PolicyInput
from websynthesis.web.actions import Action, equivalent, format_response
from websynthesis.web.observation import AXTree

HIDDEN_ELEMENT = "hidden_element"


def visible_page(role: Role, page: AXTree) -> AXTree:
    """``page`` as ``role``'s prompt shows it: cut to the role's observation budget."""
    budget = role.settings.style.observation_chars
    return page if budget is None else page.truncate(max_chars=budget)


def check_visible(action: Action, shown: AXTree) -> str | None:
    """Why ``action`` is not valid on the page as a prompt ``shown`` it, or ``None`` if it is."""
    check = action.validate(shown)
    return None if check else f"{HIDDEN_ELEMENT}/{check.reason}: {check.message}"


def policy_example(
    role: Role, question: PolicyInput, thought: str, action: Action, meta: dict[str, Any]
) -> ChatExample | str:
    """The policy prompt for ``question`` with its checked target, or why there is none.

    The target (``format_response(thought, action)``) must read back through the policy's own
    parser to an equivalent action that is valid on the page as the prompt shows it: what fails
    is a label to count (``kind/reason``), never a training example.
    """
    target = format_response(thought, action)
    parsed = role.parse(target, question)
    if not parsed.ok or parsed.value is None:
        return failure_label(parsed)
    if not equivalent(parsed.value.action, action):
        return "target_reads_back_differently"
    hidden = check_visible(action, visible_page(role, question.observation))
    if hidden is not None:
        return hidden.split(":", 1)[0]
    messages = (*role.messages(question), {"role": "assistant", "content": target})
    return ChatExample(messages=messages, meta=meta)
