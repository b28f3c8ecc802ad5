"""Policy training examples from live episodes: what WebEvolver's agent learns from itself.

evaluate.py writes, in its run dir, ``episodes.jsonl`` (one line per episode: success, the
actions it took) and ``transitions.jsonl`` (one line per executed step: the page, the policy's
thought and action, the objective, the earlier actions). An *accepted* episode (success: the
environment's reward, or WebArena's evaluators) becomes one example per executed step: the
policy's prompt for that page after the earlier steps, and its own answer as the target, in
exactly the prompt format the agent is asked at inference
(:func:`~websynthesis.data.policy_examples.policy_example` checks each target reads back).

A rerun of an interrupted or failed-by-the-environment episode appends its steps again, so
an episode's steps are its *last run* of rows (a run restarts where the step index stops
increasing); they must agree with the actions ``episodes.jsonl`` lists for it, else the
episode is left out and counted (``dropped/steps_disagree``). Rows of an episode are never
mixed across runs.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websynthesis.data.chat import ChatExample
from websynthesis.data.policy_examples import policy_example
from websynthesis.data.records import read_numbered_records, read_records
from websynthesis.data.transitions import action_field, action_set_field, failer, page_field
from websynthesis.roles.client import Role
from websynthesis.roles.prompts import PolicyInput, Step
from websynthesis.web.observation import parse_axtree

EpisodeKey = tuple[str, int, int]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveEpisode:
    """One finished episode of a run dir: its line in episodes.jsonl and its step rows."""

    record: dict[str, Any]
    steps: tuple[dict[str, Any], ...]
    source: str = ""  # the transitions.jsonl its steps come from, for errors

    @property
    def key(self) -> EpisodeKey:
        return (str(self.record["task"]), int(self.record["seed"]), int(self.record["attempt"]))

    @property
    def accepted(self) -> bool:
        """Scored a success (MiniWoB++'s reward, or WebArena's evaluators)."""
        return self.record.get("success") is True


def latest_episodes(path: Path) -> dict[EpisodeKey, dict[str, Any]]:
    """The latest line of every episode in ``episodes.jsonl`` (a rerun appends the episode
    again: the last line counts). A line whose fields are not an episode's (see
    :func:`episode_problem`) is skipped with a warning naming it, like a torn one."""
    latest = {}
    for line, record in read_numbered_records(path):
        problem = episode_problem(record)
        if problem is not None:
            log.warning("%s:%d: skipping an episode line: %s", path, line, problem)
            continue
        latest[(str(record["task"]), int(record["seed"]), int(record["attempt"]))] = record
    return latest


def episode_problem(record: dict[str, Any]) -> str | None:
    """What makes ``record`` no line of an ``episodes.jsonl`` (``None``: nothing)."""
    if not isinstance(record.get("task"), str | int) or isinstance(record.get("task"), bool):
        return "field 'task': expected a task name"
    for name in ("seed", "attempt"):
        value = record.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"field '{name}': expected an integer"
    actions = record.get("actions", [])
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        return "field 'actions': expected a list of action strings"
    if record.get("success") is not None and not isinstance(record["success"], bool):
        return "field 'success': expected true, false or null"
    if record.get("error") is not None and not isinstance(record["error"], str):
        return "field 'error': expected a string or null"
    return None


def read_episodes(run_dir: Path | str) -> list[LiveEpisode]:
    """Every episode of an evaluate.py run dir that ended without an environment error."""
    run_dir = Path(run_dir)
    runs: dict[EpisodeKey, list[list[dict[str, Any]]]] = defaultdict(list)
    for row in read_records(run_dir / "transitions.jsonl"):
        try:
            key = (str(row["task_id"]), int(row["seed"]), int(row["attempt"]))
            index = int(row["step"])
        except (KeyError, TypeError, ValueError):
            continue
        episode_runs = runs[key]
        if not episode_runs or index <= int(episode_runs[-1][-1]["step"]):
            episode_runs.append([])
        episode_runs[-1].append(row)
    episodes = []
    for key, record in latest_episodes(run_dir / "episodes.jsonl").items():
        if record.get("error") is not None:
            continue
        steps = runs[key][-1] if runs.get(key) else []
        episodes.append(LiveEpisode(record, tuple(steps), str(run_dir / "transitions.jsonl")))
    return episodes


def episode_examples(
    episodes: Iterable[LiveEpisode], role: Role, *, counts: Counter[str], source: str = ""
) -> list[ChatExample]:
    """One policy example per step of every accepted episode (see the module docstring)."""
    examples: list[ChatExample] = []
    for episode in episodes:
        if not episode.accepted:
            counts["rejected"] += 1
            continue
        executed = [a for a in episode.record.get("actions") or [] if not a.startswith("<")]
        if [row.get("action") for row in episode.steps] != executed or not executed:
            counts["dropped/steps_disagree"] += 1
            continue
        built = _examples(episode, role, source)
        bad = [why for why in built if isinstance(why, str)]
        if bad:
            counts[f"dropped/{bad[0]}"] += 1
            continue
        counts["accepted"] += 1
        examples += [example for example in built if isinstance(example, ChatExample)]
    counts["examples"] += len(examples)
    return examples


def _examples(episode: LiveEpisode, role: Role, source: str) -> list[ChatExample | str]:
    task, seed, attempt = episode.key
    history: tuple[Step, ...] = ()
    built: list[ChatExample | str] = []
    for row in episode.steps:
        where = source or episode.source or "transitions.jsonl"
        fail = failer(where, None, f"{task}/{seed}/{attempt}.")
        page = parse_axtree(page_field(row, "observation", fail))
        action = action_field(row.get("action"), "action", fail)
        thought = str(row.get("thought") or "")
        sites = tuple(str(site) for site in row.get("allowed_sites") or ())
        actions = action_set_field(row.get("action_set"), fail)
        question = PolicyInput(str(row.get("objective") or ""), page, history, sites, actions)
        meta = {
            "kind": "live",
            "task_id": task,
            "seed": seed,
            "attempt": attempt,
            "step": int(row["step"]),
            "action": action.to_string(),
            "reward": episode.record.get("reward"),
            "imagined": False,
            "source": source,
        }
        built.append(policy_example(role, question, thought, action, meta))
        history = (*history, Step(page, thought, action))
    return built
