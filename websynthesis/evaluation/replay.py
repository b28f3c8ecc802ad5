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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websynthesis.data.chat import read_chat_jsonl
from websynthesis.data.tasks import split_instance
from websynthesis.env.base import EnvError, WebEnv
from websynthesis.env.pool import EnvPool
from websynthesis.web.actions import Action, ActionKind, ActionParseError, extract_action


@dataclass(frozen=True)
class ImaginedPath:
    """One imagined success: the instance it was searched on and its actions in order."""

    task_id: str
    actions: tuple[Action, ...]
    complete: bool = True  # every step from the first page to the success is there


@dataclass(frozen=True)
class Replay:
    """What the browser made of one path: ``reproduced``, after ``steps`` real steps, and why
    not (``why``: ``refused``, ``unrewarded``, ``ran_out``, ``incomplete``: a step missing
    from the file) or an environment ``error``."""

    task_id: str
    reproduced: bool
    steps: int
    why: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def imagined_paths(valuable: Path) -> list[ImaginedPath]:
    """Each tree's successful path from a ``valuable.jsonl`` (rows of one tree, by depth).

    A row without its tree's ``meta.task_id`` or an integer ``meta.depth``, or whose target
    holds no action, is a corrupt file, not a path: ``ValueError`` naming the file and row.
    A path whose depths are not 1, 2, ... n (extraction dropped a step it could not render)
    is kept, marked incomplete: it is still an imagined success, and it cannot be replayed.
    """
    steps: dict[str, list[tuple[int, Action]]] = defaultdict(list)
    for row, example in enumerate(read_chat_jsonl(valuable), start=1):
        task_id, depth = example.meta.get("task_id"), example.meta.get("depth")
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"{valuable}: row {row}: meta.task_id missing or not a string")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"{valuable}: row {row}: meta.depth missing or not a depth >= 1")
        try:
            action = extract_action(example.messages[-1]["content"])
        except ActionParseError as error:
            raise ValueError(
                f"{valuable}: row {row}: a valuable step of {task_id} holds no action: {error}"
            ) from None
        steps[task_id].append((depth, action))
    paths = []
    for task_id, rows in steps.items():
        rows.sort(key=lambda r: r[0])
        depths = [depth for depth, _ in rows]
        paths.append(
            ImaginedPath(
                task_id,
                tuple(action for _, action in rows),
                complete=depths == list(range(1, len(rows) + 1)),
            )
        )
    return paths


def replay(env: WebEnv, path: ImaginedPath) -> Replay:
    """Run ``path`` on its instance in ``env`` (see the module docstring)."""
    if not path.complete:
        return Replay(path.task_id, False, 0, "incomplete")
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
