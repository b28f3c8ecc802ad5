"""Which actions an environment's pages take: its declared action set.

Why a set per environment: WebArena's twelve verbs include tabs, URLs and history, which a
MiniWoB++ page (one page, no address bar) never needs. A policy offered all twelve there
spends most of its samples, and a search most of its branches, on actions that cannot help;
and MiniWoB++'s ``<select>`` lists want BrowserGym's ``select_option``, which WebArena's
grammar lacks. The environment config names its set (``env.actions``); the policy's prompt and
grammar, its answer's validation and the browser's refusal all read that one set, and the
episodes, trees and training examples record it, so a policy is trained on the prompt it is
asked with.

A task file in WebArena's format that names no set gets WebArena's (:data:`WEBARENA_ACTIONS`).
"""

from __future__ import annotations

from collections.abc import Iterable

from websynthesis.web.action_space import Action, ActionKind, Reason, ValidationResult

ActionSet = frozenset[ActionKind]

# WebArena's twelve (browser_env/actions.py, id-based).
WEBARENA_ACTIONS: ActionSet = frozenset(ActionKind) - {ActionKind.SELECT_OPTION}
# A declaration lists verbs in this order wherever it is shown (prompts, records).
_ORDER = {kind: index for index, kind in enumerate(ActionKind)}


def action_set(names: Iterable[str] | None) -> ActionSet:
    """The set named by ``names`` (canonical verbs: ``click``, ``select_option``...); ``None``
    or an empty list is WebArena's. Raises ``ValueError`` naming an unknown verb."""
    chosen = [str(name).strip() for name in names or ()]
    if not chosen:
        return WEBARENA_ACTIONS
    known = {kind.value: kind for kind in ActionKind}
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r} in an action set; known: {sorted(known)}")
    return frozenset(known[name] for name in chosen)


def action_names(actions: ActionSet) -> list[str]:
    """The set as its verbs in a fixed order: what records and configs hold."""
    return [kind.value for kind in sorted(actions, key=_ORDER.__getitem__)]


def check_declared(action: Action, actions: ActionSet) -> ValidationResult:
    """Whether ``action``'s verb is in the environment's declared set."""
    if action.kind in actions:
        return ValidationResult(True)
    return ValidationResult(
        False,
        Reason.UNDECLARED_ACTION,
        f"{action.kind} is not an action of this environment ({', '.join(action_names(actions))})",
    )
