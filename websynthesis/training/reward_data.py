"""Process-reward and judge training data, labelled by the environment's outcomes.

Why: in imagination (``synthesize.py world=model``) the only value signal MCTS has is the
``reward`` role, and an untrained reward model scores at random. Live episodes (evaluate.py
run dirs) and live-browser search trees (``synthesize.py world=browser``) say which steps led
to a success, from the environment's own reward, so they can teach the reward role (and the
``judge``, on whole trajectories) what progress looks like, in exactly the prompts search and
imagination ask them.

**The labelling rule** (Math-Shepherd's "hard estimation", applied to every source at once).
All the steps of one *instance* (a MiniWoB++ task under a seed, ``click-test@3``; a WebArena
task) are merged into one outcome tree keyed by the action sequence from the first page: the
environment is deterministic under a seed (the browser world's reset-and-replay relies on it
too), so the same actions reach the same state, whichever episode or search took them.
A node is marked

- *success* where an episode that succeeded ended, or a search node the search counted a
  success (a stop or end-gate node at or above the end gate, scored by the environment);
- *failure* where a failed episode ended (whatever ended it: a wrong stop, the environment's
  ``done`` with reward 0, ``max_steps``, the policy's failures), or at a search node that is
  terminal but no success (wrong stop, ``world`` end, ``depth_limit``, ``dead_end``).
  A step the world could not simulate (``world_error``) is no state: it is left out.

Then each step (the node its action reached) gets, on the reward role's scale
``[low, high]`` (``model.roles.reward.score_low/high``, 1-5 by default):

=================  ===========================================  ========================
status             rule                                         score (1-5 scale)
=================  ===========================================  ========================
``success``        the node itself is a success                 ``high`` (5)
``progress``       a success lies below it (on a path to one)   the middle level (3)
``dead``           no success below, every leaf below a failure ``low`` (1)
``open``           no success below, some leaf never resolved   left out (or ``low``)
``refused``        the live page refused the step's action      ``low`` (1)
=================  ===========================================  ========================

A *refused* step (an episode row's ``last_action_error``, a live search node's
``WebState.refused``: a click Playwright timed out on, a key it does not know) did nothing: the
page is the one before it. Whatever lies below, it is labelled low (``reward.refused: low``,
the default), so that the reward model learns that an action the page does not take is no
progress; in imagination nothing else tells the search (the world model answers any action
with some page). ``reward.refused: tree`` labels it by the outcome tree like any other step
(held-out ranking quality keeps that rule, so its figures stay comparable). The node stays in
the outcome tree: the steps after it are labelled as before.

These are the rubric's levels (reward_system.jinja): 5 "fully accomplished", 3 "clear
progress ... not finishing it yet", 1 "fails". ``progress`` means a success is still reachable
from the step (an MCTS value), not that the step itself helped: a harmless detour before a
success is ``progress`` too. The middle level stays below the search's end gate (4.75), so a
trained reward model does not end an imagined search at a step that only progresses.

A step of a failed episode is therefore *low* only past the point of no return the data can
see: while its action prefix is shared with a success (another attempt, or the search, went on
from there to succeed) it is ``progress``. With one attempt per instance every step of a
failure is low; that is the estimate's known bias (a sound first step of a failed episode),
reduced by more attempts per instance. ``open`` leaves only come from search trees
(an unexpanded node): ``unresolved: low`` labels them low, as the search valued them.

Imagined trees (``world=model``: their rewards are a model's, not the environment's; no
``goal`` in their record) are skipped and counted: their labels would be the reward model's
own guesses.

**Judge**: each whole trajectory (an episode, or a search path to a terminal node) in the
outcome judge's prompt, as imagination asks it (objective, every step, the final page, the
answer when it stopped): 1 when it ended in a success, 0.5 when it ended short of one that lies
below its end (cut by a step limit on a path to a success: "on track"), 0 when it failed and
nothing below its end succeeded; an end that is neither (a failed end some unexpanded search
node continues) is left out.

**Targets** are :func:`~websynthesis.roles.parsing.format_rating` answers (``Reason: <one
line>`` then ``Score: <n>``), which the role's parser reads back to the label and its grammar
(:func:`~websynthesis.roles.grammar.score_grammar`, integer scores; ``judge_grammar``, 0,
0.5 or 1) accepts; a constrained reward role on a scale whose middle level is not an integer
is an error. Prompts are built by the role's own :meth:`~websynthesis.roles.client.Role.
messages` with the student model's role settings.

Examples come in a deterministic order (sources in config order, then file order, then steps
in order or nodes by id), with identical (prompt, target) pairs kept once; one prompt with two
labels (pages cut to the same prompt) keeps the highest (``conflicts``). ``counts`` gets the
class balance (``label/<score>``, ``good``/``bad``) and what was left out and why;
``balance: true`` draws (seeded) the larger of good and bad down to the smaller's size.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websynthesis.data.chat import ChatExample
from websynthesis.data.tasks import instance_id
from websynthesis.data.transitions import action_field, failer, page_field
from websynthesis.io import DataFileError, read_jsonl
from websynthesis.roles.client import Role
from websynthesis.roles.parsing import Rating, ScoreScale, format_number, format_rating
from websynthesis.roles.prompts import JudgeInput, RewardInput, Step
from websynthesis.web.actions import Action, ActionKind, parse_action
from websynthesis.web.observation import parse_axtree

SUCCESS, PROGRESS, DEAD, OPEN, REFUSED = "success", "progress", "dead", "open", "refused"
UNRESOLVED = ("skip", "low")
REFUSED_RULES = ("low", "tree")

# One line each (the grammar's reason is one line) and short (the tiny model answers in 48
# tokens): what the label means, in the rubric's words.
REWARD_REASONS = {
    SUCCESS: "The last action accomplished the task.",
    PROGRESS: "The task is not finished yet, and it can still be accomplished from here.",
    DEAD: "The trajectory has gone wrong: the task is not accomplished from here.",
    REFUSED: "The page refused the last action: it did nothing.",
}
JUDGE_REASONS = {
    1.0: "The agent accomplished the task.",
    0.5: "The task is not complete yet, but the trajectory is heading the right way.",
    0.0: "The agent did not accomplish the task.",
}


# --- the outcome tree --------------------------------------------------------------------


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    success: bool = False
    failure: bool = False
    below: bool = False  # a success here or under
    closed: bool = False  # no success under, and every leaf under is a failure


class OutcomeTree:
    """Every instance's steps merged by action sequence, with the outcomes where they ended."""

    def __init__(self) -> None:
        self._roots: dict[str, _Node] = {}
        self._resolved = True

    def node(self, instance: str, actions: Sequence[str]) -> _Node:
        node = self._roots.setdefault(instance, _Node())
        for action in actions:
            node = node.children.setdefault(action, _Node())
        self._resolved = False
        return node

    def mark(self, instance: str, actions: Sequence[str], *, success: bool) -> None:
        node = self.node(instance, actions)
        if success:
            node.success = True
        else:
            node.failure = True

    def status(self, instance: str, actions: Sequence[str]) -> str:
        """``success``, ``progress``, ``dead`` or ``open`` (see the module docstring)."""
        if not self._resolved:
            for root in self._roots.values():
                _resolve(root)
            self._resolved = True
        node = self._roots[instance]
        for action in actions:
            node = node.children[action]
        if node.success:
            return SUCCESS
        if node.below:
            return PROGRESS
        return DEAD if node.closed else OPEN

    def conflicts(self) -> int:
        """Nodes marked both a success and a failure (an environment that is not repeatable)."""
        stack, found = list(self._roots.values()), 0
        while stack:
            node = stack.pop()
            found += node.success and node.failure
            stack.extend(node.children.values())
        return found


def _resolve(root: _Node) -> None:
    """Set ``below`` and ``closed`` bottom-up, without recursion (deep trees)."""
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children.values())
    for node in reversed(order):  # children before parents
        kids = node.children.values()
        node.below = node.success or any(child.below for child in kids)
        leaf_failed = all(child.closed for child in kids) if kids else node.failure
        node.closed = not node.below and leaf_failed


# --- what the sources hold ---------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """One step as the reward role is asked about it, and where it sits in the outcome tree."""

    instance: str
    actions: tuple[str, ...]  # from the first page, this step's action last
    question: RewardInput
    origin: str  # "episode" or "tree"
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    refused: str | None = None  # why the live page refused this step's action


@dataclass(frozen=True)
class TrajectoryRecord:
    """One whole trajectory as the outcome judge is asked about it."""

    instance: str
    actions: tuple[str, ...]
    question: JudgeInput
    origin: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Outcomes:
    """The steps and trajectories of every source, and their merged outcome tree."""

    tree: OutcomeTree = field(default_factory=OutcomeTree)
    steps: list[StepRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)


@dataclass(frozen=True)
class LabelledStep:
    """A step with its label: ``score`` on the reward scale, ``good`` when above ``low``."""

    record: StepRecord
    status: str
    score: float

    @property
    def good(self) -> bool:
        return self.status in (SUCCESS, PROGRESS)


@dataclass(frozen=True)
class LabelledTrajectory:
    """A trajectory with its verdict: 1, 0.5 or 0."""

    record: TrajectoryRecord
    verdict: float


def read_outcomes(
    episodes: Iterable[Path | str] = (),
    trees: Iterable[Path | str] = (),
    *,
    counts: Counter[str] | None = None,
) -> Outcomes:
    """The steps of ``episodes`` (evaluate.py run dirs, or their ``episodes.jsonl``) and of
    ``trees`` (synthesize.py run dirs, or their ``trees.jsonl``), in that order."""
    counts = Counter() if counts is None else counts
    out = Outcomes()
    for source in episodes:
        run_dir = Path(source)
        run_dir = run_dir.parent if run_dir.suffix == ".jsonl" else run_dir
        if not (run_dir / "episodes.jsonl").is_file():
            raise FileNotFoundError(f"{run_dir}: no episodes.jsonl (an evaluate.py run dir)")
        _read_episodes(run_dir, out, counts)
    for source in trees:
        path = Path(source)
        path = path / "trees.jsonl" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no trees.jsonl (a synthesize.py run dir)")
        _read_trees(path, out, counts)
    counts["outcome_conflicts"] += out.tree.conflicts()
    return out


def _read_episodes(run_dir: Path, out: Outcomes, counts: Counter[str]) -> None:
    from websynthesis.data.episodes import read_episodes

    source = str(run_dir)
    for episode in read_episodes(run_dir):
        task, seed, attempt = episode.key
        success = episode.record.get("success")
        if not isinstance(success, bool):
            counts["episodes_skipped/unscored"] += 1
            continue
        executed = [a for a in episode.record.get("actions") or [] if not a.startswith("<")]
        if [row.get("action") for row in episode.steps] != executed:
            counts["episodes_skipped/steps_disagree"] += 1
            continue
        if not executed:
            counts["episodes_skipped/no_steps"] += 1
            continue
        try:
            rows = list(_episode_steps(episode.steps, f"{source}/transitions.jsonl", episode.key))
        except DataFileError:
            counts["episodes_skipped/bad_row"] += 1
            continue
        instance = instance_id(task, seed)
        objective = str(episode.steps[0].get("objective") or "")
        history: tuple[Step, ...] = ()
        actions: tuple[str, ...] = ()
        for index, (step, after, row) in enumerate(rows):
            history, actions = (*history, step), (*actions, step.action.to_string())
            out.tree.node(instance, actions)
            where = {"task": task, "seed": seed, "attempt": attempt, "step": int(row["step"])}
            meta = {"origin": "episode", "source": source, **where, "index": index}
            question = RewardInput(objective, history, after)
            refused = str(row["last_action_error"]) if row.get("last_action_error") else None
            record = StepRecord(instance, actions, question, "episode", meta, refused)
            out.steps.append(record)
        out.tree.mark(instance, actions, success=success)
        last, final = history[-1], rows[-1][1]
        answer = (last.action.text or "") if last.action.kind is ActionKind.STOP else None
        judge = JudgeInput(objective, history, observation=final, answer=answer)
        meta = {"origin": "episode", "source": source, "task": task, "seed": seed}
        meta |= {"attempt": attempt, "steps": len(history), "success": success}
        out.trajectories.append(TrajectoryRecord(instance, actions, judge, "episode", meta))
        counts["episodes"] += 1


def _episode_steps(
    rows: Sequence[dict[str, Any]], path: str, key: tuple[str, int, int]
) -> Iterable[tuple[Step, Any, dict[str, Any]]]:
    for row in rows:
        fail = failer(path, None, f"{key[0]}/{key[1]}/{key[2]}.")
        page = parse_axtree(page_field(row, "observation", fail))
        after = parse_axtree(page_field(row, "next_observation", fail))
        action = action_field(row.get("action"), "action", fail)
        yield Step(page, str(row.get("thought") or ""), action), after, row


def _read_trees(path: Path, out: Outcomes, counts: Counter[str]) -> None:
    from websynthesis.search import SearchResult, TerminalKind
    from websynthesis.synthesis.state import WebState, history

    for line, record in read_jsonl(path):
        if not isinstance(record, dict) or record.get("tree") is None:
            counts["trees_skipped/not_searched"] += 1
            continue
        goal = record.get("goal")
        if not isinstance(goal, dict):  # only a live site's record keeps its goal
            counts["trees_skipped/imagined"] += 1
            continue
        task_id = str(record["task_id"])
        try:
            result = SearchResult.from_dict(
                record["tree"], lambda data, t=task_id: WebState.from_json(t, data), parse_action
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataFileError(path, line, "tree", f"not a search tree: {error}") from None
        nodes = result.root.walk()[1:]
        if not any(node.env_reward is not None for node in nodes):
            counts["trees_skipped/no_env_reward"] += 1
            continue
        objective = str(goal.get("objective") or "")
        for node in sorted(nodes, key=lambda n: n.id):
            if node.terminal is TerminalKind.WORLD_ERROR:
                counts["tree_nodes_skipped/world_error"] += 1
                continue
            actions = tuple(action.to_string() for action in node.state.actions)
            steps = history(node)
            meta = {"origin": "tree", "source": str(path), "task": task_id, "node": node.id}
            meta |= {"depth": node.depth, "index": node.depth - 1}
            question = RewardInput(objective, steps, node.state.observation)
            out.tree.node(task_id, actions)
            refused = node.state.refused
            out.steps.append(StepRecord(task_id, actions, question, "tree", meta, refused))
            if node.terminal is None:
                continue
            success = result.config.is_success(node)
            out.tree.mark(task_id, actions, success=success)
            action: Action = node.action
            answer = (action.text or "") if action.kind is ActionKind.STOP else None
            judge = JudgeInput(objective, steps, observation=node.state.observation, answer=answer)
            end = meta | {"terminal": node.terminal.value, "success": success}
            out.trajectories.append(TrajectoryRecord(task_id, actions, judge, "tree", end))
        counts["trees"] += 1


# --- labels ------------------------------------------------------------------------------


def label_scores(scale: ScoreScale) -> dict[str, float]:
    """The score of each status on ``scale``: high, the middle level, low."""
    return {SUCCESS: scale.high, PROGRESS: scale.levels()[2], DEAD: scale.low, REFUSED: scale.low}


def labelled_steps(
    outcomes: Outcomes,
    scale: ScoreScale,
    *,
    unresolved: str = "skip",
    refused: str = "tree",
    counts: Counter[str] | None = None,
) -> list[LabelledStep]:
    """Every step of ``outcomes`` with its label (``open`` ones per ``unresolved``; refused
    ones low under ``refused="low"``, by the outcome tree under ``"tree"``)."""
    if unresolved not in UNRESOLVED:
        raise ValueError(f"unresolved must be one of {UNRESOLVED}, not {unresolved!r}")
    if refused not in REFUSED_RULES:
        raise ValueError(f"refused must be one of {REFUSED_RULES}, not {refused!r}")
    counts = Counter() if counts is None else counts
    scores = label_scores(scale)
    labelled = []
    for record in outcomes.steps:
        if record.refused is not None and refused == "low":
            counts["refused"] += 1
            labelled.append(LabelledStep(record, REFUSED, scores[REFUSED]))
            continue
        status = outcomes.tree.status(record.instance, record.actions)
        if status == OPEN:
            counts["unresolved"] += 1
            if unresolved == "skip":
                continue
            status = DEAD
        labelled.append(LabelledStep(record, status, scores[status]))
    return labelled


def labelled_trajectories(
    outcomes: Outcomes, *, counts: Counter[str] | None = None
) -> list[LabelledTrajectory]:
    """Every trajectory of ``outcomes`` with its verdict (see the module docstring)."""
    counts = Counter() if counts is None else counts
    verdicts = {SUCCESS: 1.0, PROGRESS: 0.5, DEAD: 0.0}
    labelled = []
    for record in outcomes.trajectories:
        status = outcomes.tree.status(record.instance, record.actions)
        if status == OPEN:
            counts["unresolved"] += 1
            continue
        labelled.append(LabelledTrajectory(record, verdicts[status]))
    return labelled


def reward_target(status: str, scale: ScoreScale) -> str:
    """The reward role's answer for a step of ``status``: ``Reason: …`` then ``Score: …``."""
    return format_rating(Rating(label_scores(scale)[status], REWARD_REASONS[status]))


def judge_target(verdict: float) -> str:
    """The judge's answer for a trajectory with ``verdict`` (1, 0.5 or 0)."""
    return format_rating(Rating(verdict, JUDGE_REASONS[verdict]))


# --- examples ----------------------------------------------------------------------------


def reward_examples(
    steps: Iterable[LabelledStep],
    role: Role,
    *,
    balance: bool = False,
    seed: int = 0,
    counts: Counter[str] | None = None,
) -> list[ChatExample]:
    """One example per distinct labelled step, in the reward ``role``'s prompt."""
    if role.name != "reward":
        raise ValueError(f"reward examples need the reward role, not {role.name!r}")
    scale = role.settings.scale
    middle = label_scores(scale)[PROGRESS]
    if role.settings.constrained and not middle.is_integer():
        raise ValueError(
            f"the constrained reward role answers integers only; the middle of {scale} "
            f"({format_number(middle)}) is not one: widen model.roles.reward.score_low/high"
        )
    rows = []
    for step in steps:
        target = reward_target(step.status, scale)
        meta = {"kind": "reward", "task_id": step.record.instance, **step.record.meta}
        meta |= {"status": step.status, "score": step.score, "good": step.good}
        rows.append((role.messages(step.record.question), target, step.score, step.good, meta))
    return _examples(rows, balance=balance, seed=seed, counts=counts)


def judge_examples(
    trajectories: Iterable[LabelledTrajectory],
    role: Role,
    *,
    balance: bool = False,
    seed: int = 0,
    counts: Counter[str] | None = None,
) -> list[ChatExample]:
    """One example per distinct labelled trajectory, in the judge ``role``'s prompt."""
    if role.name != "judge":
        raise ValueError(f"judge examples need the judge role, not {role.name!r}")
    rows = []
    for trajectory in trajectories:
        verdict = trajectory.verdict
        meta = {"kind": "judge", "task_id": trajectory.record.instance, **trajectory.record.meta}
        meta |= {"verdict": verdict, "good": verdict == 1.0}
        question = role.messages(trajectory.record.question)
        rows.append((question, judge_target(verdict), verdict, verdict == 1.0, meta))
    return _examples(rows, balance=balance, seed=seed, counts=counts)


Row = tuple[tuple[dict[str, str], ...], str, float, bool, dict[str, Any]]


def _examples(
    rows: list[Row], *, balance: bool, seed: int, counts: Counter[str] | None
) -> list[ChatExample]:
    """Dedupe (a prompt with two labels keeps the highest), count, optionally balance."""
    counts = Counter() if counts is None else counts
    best: dict[tuple[str, ...], int] = {}  # prompt -> index of its kept row
    kept: list[Row | None] = []
    for row in rows:
        prompt = tuple(m["content"] for m in row[0])
        if prompt not in best:
            best[prompt] = len(kept)
            kept.append(row)
            continue
        index = best[prompt]
        earlier = kept[index]
        assert earlier is not None
        if earlier[1] == row[1]:
            counts["dropped/duplicate"] += 1
        else:
            counts["conflicts"] += 1
            if row[2] > earlier[2]:
                kept[index] = row
    unique = [row for row in kept if row is not None]
    if balance:
        unique = _balanced(unique, seed, counts)
    examples = []
    for messages, target, score, good, meta in unique:
        counts[f"label/{format_number(score)}"] += 1
        counts["good" if good else "bad"] += 1
        answer = {"role": "assistant", "content": target}
        examples.append(ChatExample((*messages, answer), meta))
    counts["kept"] += len(examples)
    return examples


def _balanced(rows: list[Row], seed: int, counts: Counter[str]) -> list[Row]:
    """The larger of good and bad drawn (seeded, order kept) down to the smaller's size."""
    good = [i for i, row in enumerate(rows) if row[3]]
    bad = [i for i, row in enumerate(rows) if not row[3]]
    if not good or not bad:
        counts["balance/one_class_only"] += 1
        return rows
    larger, smaller = (good, bad) if len(good) > len(bad) else (bad, good)
    drawn = set(random.Random(seed).sample(larger, len(smaller))) | set(smaller)
    counts["balance/left_out"] += len(rows) - len(drawn)
    return [row for i, row in enumerate(rows) if i in drawn]
