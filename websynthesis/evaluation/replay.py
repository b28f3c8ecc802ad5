"""Do imagined successes really succeed? Each one replayed, action by action, in the browser.

Why: a search inside the world model counts a path as a success when the *reward model*
says its last page reaches the end gate; nothing real happened. The valuable trajectories
of such a search are training data only as good as that judgement, so the evidence replays
every one of them on its own instance (``task@seed``: the same MiniWoB++ page the imagined
search started from) and reports how many the environment rewards: the reproduction rate.

A replay succeeds when a step ends the episode with a positive reward (MiniWoB++ ends an
episode as soon as it is solved, which may come before the path's ``stop``). It fails when
the path runs out, an action is refused on the real page (``last_action_error``: the world
model showed an element the page does not have, say), or the episode ends unrewarded. An
environment error is recorded apart (``error``), not counted as a failure of the imagination.

Paths are read from the synthesis run's ``trajectories/valuable.jsonl``: each tree's best
successful path, one row per step, with its tree's ``task_id`` and the step's ``depth``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websynthesis.data.chat import read_chat_jsonl
from websynthesis.env.base import EnvError, WebEnv
from websynthesis.env.browser_world import split_instance
from websynthesis.env.pool import EnvPool
from websynthesis.web.actions import Action, ActionKind, ActionParseError, extract_action


@dataclass(frozen=True)
class ImaginedPath:
    """One imagined success: the instance it was searched on and its actions in order."""

    task_id: str
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Replay:
    """What the browser made of one path: ``reproduced``, after ``steps`` real steps, and why
    not (``why``: ``refused``, ``unrewarded``, ``ran_out``) or an environment ``error``."""

    task_id: str
    reproduced: bool
    steps: int
    why: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "reproduced": self.reproduced,
            "steps": self.steps,
            "why": self.why,
            "error": self.error,
        }


def imagined_paths(valuable: Path) -> list[ImaginedPath]:
    """Each tree's successful path from a ``valuable.jsonl`` (rows of one tree, by depth).

    A row whose target holds no action is a corrupt file, not a path: ``ValueError`` naming
    the row's task.
    """
    steps: dict[str, list[tuple[int, Action]]] = defaultdict(list)
    for example in read_chat_jsonl(valuable):
        task_id = str(example.meta["task_id"])
        try:
            action = extract_action(example.messages[-1]["content"])
        except ActionParseError as error:
            raise ValueError(
                f"{valuable}: a valuable step of {task_id} holds no action: {error}"
            ) from None
        steps[task_id].append((int(example.meta["depth"]), action))
    return [
        ImaginedPath(task_id, tuple(action for _, action in sorted(rows, key=lambda r: r[0])))
        for task_id, rows in steps.items()
    ]


def replay(env: WebEnv, path: ImaginedPath) -> Replay:
    """Run ``path`` on its instance in ``env`` (see the module docstring)."""
    task, seed = split_instance(path.task_id, 0)
    try:
        env.reset(task, seed)
        for index, action in enumerate(path.actions, start=1):
            result = env.step(action)
            if result.observation.last_action_error:
                return Replay(path.task_id, False, index, "refused")
            if result.done or action.kind is ActionKind.STOP:
                solved = result.reward > 0
                return Replay(path.task_id, solved, index, None if solved else "unrewarded")
        return Replay(path.task_id, False, len(path.actions), "ran_out")
    except EnvError as error:
        return Replay(path.task_id, False, 0, error=str(error))


def replay_all(
    make_env: Callable[[], WebEnv], paths: list[ImaginedPath], size: int
) -> list[Replay]:
    """Every path, ``size`` browsers at a time, in the order given."""
    if not paths:
        return []
    with EnvPool(make_env, max(1, min(size, len(paths)))) as pool:
        return pool.map(replay, paths)


def reproduction(replays: list[Replay]) -> dict[str, Any]:
    """Per task and overall: imagined successes, reproduced, and the reasons of the others."""
    by_task: dict[str, dict[str, Any]] = {}
    for item in replays:
        task = split_instance(item.task_id, 0)[0]
        row = by_task.setdefault(task, {"imagined_successes": 0, "reproduced": 0, "why": {}})
        if item.error is not None:
            row["errors"] = row.get("errors", 0) + 1
            continue
        row["imagined_successes"] += 1
        row["reproduced"] += int(item.reproduced)
        if item.why:
            row["why"][item.why] = row["why"].get(item.why, 0) + 1
    total = {
        "imagined_successes": sum(r["imagined_successes"] for r in by_task.values()),
        "reproduced": sum(r["reproduced"] for r in by_task.values()),
        "errors": sum(r.get("errors", 0) for r in by_task.values()),
        "real_steps": sum(r.steps for r in replays),
    }
    return total | {"tasks": dict(sorted(by_task.items()))}
