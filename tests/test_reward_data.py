"""Reward and judge data: steps and trajectories labelled by the environment's outcomes.

A hand-made evaluate.py run dir (three attempts at one instance, one at another) and a
live-browser tree of the second instance, whose labels are worked out by hand in
:data:`EXPECTED`; targets read back through the roles' parsers and grammars; prompts are the
ones search asks; the mixes dedupe, are deterministic and refuse an empty source; and
``train.py +experiment=reward_model model=tiny`` trains an adapter the reward role then serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from websynthesis.roles.client import Role, RoleSettings
from websynthesis.roles.parsing import ScoreScale, parse_judge, parse_reward
from websynthesis.roles.prompts import JudgeInput, RewardInput
from websynthesis.search import Node, SearchResult, SearchSettings, StopReason, TerminalKind
from websynthesis.search.result import TreeStats
from websynthesis.synthesis.state import WebState, encode_action, history
from websynthesis.training.mixes import build_mix, student_role
from websynthesis.training.reward_data import (
    DEAD,
    PROGRESS,
    REFUSED,
    SUCCESS,
    judge_examples,
    judge_target,
    labelled_steps,
    labelled_trajectories,
    read_outcomes,
    reward_examples,
    reward_target,
)
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import parse_axtree

REPO_ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = "Log in as marie"
HOME = (
    "Tab 0 (current): Quiet Forum\n\n"
    "[1] RootWebArea 'Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[9] link 'Log in'\n"
    "\t[21] link 'Welcome, new members'"
)
LOGIN = (
    "Tab 0 (current): Log in\n\n"
    "[1] RootWebArea 'Log in' focused: True\n"
    "\t[30] textbox 'Username' required: True\n"
    "\t[32] button 'Log in'"
)
DONE = "Tab 0 (current): Welcome\n\n[1] RootWebArea 'Welcome, marie' focused: True"
WELCOME = "Tab 0 (current): New members\n\n[1] RootWebArea 'New members' focused: True"
ACTIONS = ["click", "type", "press", "stop", "select_option"]
TINY_REWARD = {"template": "reward", "constrained": True, "observation_chars": 3000,
               "step_chars": 600, "max_new_tokens": 48}  # fmt: skip
TINY_JUDGE = {**TINY_REWARD, "template": "judge"}
MODEL = {"roles": {"reward": TINY_REWARD, "judge": TINY_JUDGE}}

# (task, seed, attempt, success, [(page, thought, action, next page)])
EPISODES = [
    ("login", 0, 0, True, [(HOME, "Open the form.", "click [9]", LOGIN),
                           (LOGIN, "Submit.", "click [32]", DONE)]),
    ("login", 0, 1, False, [(HOME, "Open the form.", "click [9]", LOGIN),  # same prompt
                            (LOGIN, "Focus the name.", "click [30]", LOGIN)]),
    ("login", 0, 2, False, [(HOME, "Read the welcome.", "click [21]", WELCOME)]),
    ("login", 1, 0, False, [(HOME, "Go home.", "click [5]", HOME)]),
]  # fmt: skip
# Episode steps by (seed, attempt, step index): the rule worked out by hand.
EXPECTED = {
    (0, 0, 0): PROGRESS,  # shared with attempt 1, and attempt 0 went on to succeed
    (0, 0, 1): SUCCESS,
    (0, 1, 0): PROGRESS,
    (0, 1, 1): DEAD,  # past the point where attempt 1 left the successful path
    (0, 2, 0): DEAD,
    (1, 0, 0): DEAD,
}


def write_episodes(run_dir: Path, episodes: list[Any] = EPISODES) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for task, seed, attempt, success, steps in episodes:
        records.append({
            "task": task, "seed": seed, "attempt": attempt, "success": success,
            "steps": len(steps), "error": None, "reward": float(success),
            "end": "done" if success else "max_steps", "answer": None,
            "actions": [action for _, _, action, _ in steps],
        })  # fmt: skip
        for index, (page, thought, action, after) in enumerate(steps):
            rows.append({
                "observation": page, "action": action, "next_observation": after,
                "history": [a for _, _, a, _ in steps[:index]], "task_id": task,
                "imagined": False, "source": "evaluate", "seed": seed, "attempt": attempt,
                "step": index, "objective": OBJECTIVE, "allowed_sites": [],
                "action_set": ACTIONS, "thought": thought,
            })  # fmt: skip
    (run_dir / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "transitions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def browser_tree() -> SearchResult[WebState, Any]:
    """``login@1`` searched live: click [5] ends the episode (failed), click [9] then click
    [32] succeeds, click [21] was never expanded, click [30] could not be simulated."""
    config = SearchSettings(low=1.0, high=5.0, end_gate=4.75, max_depth=3)
    root: Node[WebState, Any] = Node(0, WebState("login@1", parse_axtree(HOME)))

    def child(parent: Node[WebState, Any], node_id: int, action: str, page: str, **kw: Any) -> Any:
        act = parse_action(action)
        state = parent.state.after(act, parse_axtree(page))
        node = Node(node_id, state, parent, act, f"Try {action}.", parent.depth + 1, **kw)
        parent.children.append(node)
        parent.expanded = True
        return node

    child(root, 1, "click [5]", HOME, reward=1.0, env_reward=0.0, terminal=TerminalKind.WORLD)
    login = child(root, 2, "click [9]", LOGIN, reward=1.0, env_reward=0.0)
    child(login, 3, "click [32]", DONE, reward=5.0, env_reward=1.0,
          terminal=TerminalKind.END_GATE)  # fmt: skip
    child(root, 4, "click [21]", WELCOME, reward=1.0, env_reward=0.0)
    child(login, 5, "click [30]", LOGIN, terminal=TerminalKind.WORLD_ERROR, reward_ok=False)
    return SearchResult("login@1", root, config, StopReason.ITERATIONS, 4, 1.0, TreeStats())


def write_trees(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    live = {
        "task_id": "login@1",
        "goal": {"objective": OBJECTIVE, "allowed_sites": [], "action_set": ACTIONS},
        "skipped": None,
        "tree": browser_tree().to_dict(lambda state: state.to_json(), encode_action),
    }
    imagined = {**live, "task_id": "imagined-1"}
    del imagined["goal"]  # a world=model record: its task file holds the objective
    lines = [json.dumps(live), json.dumps(imagined)]
    (run_dir / "trees.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture
def episodes_dir(tmp_path: Path) -> Path:
    return write_episodes(tmp_path / "eval")


@pytest.fixture
def trees_dir(tmp_path: Path) -> Path:
    return write_trees(tmp_path / "synth")


def reward_role(**settings: Any) -> Role:
    return Role("reward", RoleSettings(**{"template": "reward", **settings}))


def judge_role() -> Role:
    return Role("judge", RoleSettings("judge", constrained=True))


def test_episode_steps_are_labelled_by_where_their_instance_succeeded(episodes_dir: Path) -> None:
    counts: Counter[str] = Counter()
    steps = labelled_steps(read_outcomes([episodes_dir], counts=counts), ScoreScale())
    got = {(s.record.meta["seed"], s.record.meta["attempt"], s.record.meta["index"]): s.status
           for s in steps}  # fmt: skip
    assert got == EXPECTED
    assert {s.status: s.score for s in steps} == {SUCCESS: 5.0, PROGRESS: 3.0, DEAD: 1.0}
    assert counts["episodes"] == 4 and counts["unresolved"] == 0
    first = steps[1].record.question  # attempt 0's success: the whole episode, its last page
    assert [step.action.to_string() for step in first.history] == ["click [9]", "click [32]"]
    assert first.observation.render() == DONE and first.objective == OBJECTIVE
    verdicts = [(t.record.meta["seed"], t.record.meta["attempt"], t.verdict)
                for t in labelled_trajectories(read_outcomes([episodes_dir]))]  # fmt: skip
    assert verdicts == [(0, 0, 1.0), (0, 1, 0.0), (0, 2, 0.0), (1, 0, 0.0)]


def test_live_trees_merge_with_episodes_and_imagined_trees_are_skipped(
    episodes_dir: Path, trees_dir: Path
) -> None:
    counts: Counter[str] = Counter()
    outcomes = read_outcomes([episodes_dir], [trees_dir], counts=counts)
    assert counts["trees"] == 1 and counts["trees_skipped/imagined"] == 1
    assert counts["tree_nodes_skipped/world_error"] == 1
    steps = labelled_steps(outcomes, ScoreScale(), counts=counts)
    tree = {s.record.meta["node"]: s.status for s in steps if s.record.origin == "tree"}
    assert tree == {1: DEAD, 2: PROGRESS, 3: SUCCESS}  # node 4 was never resolved
    assert counts["unresolved"] == 1
    # The tree's success on login@1 lifts nothing of the episode on it: click [5] failed.
    episode = [s.status for s in steps if s.record.origin == "episode"]
    assert episode == [EXPECTED[key] for key in sorted(EXPECTED)]
    low = labelled_steps(outcomes, ScoreScale(), unresolved="low")
    assert {s.record.meta["node"]: s.status for s in low if s.record.origin == "tree"}[4] == DEAD
    judged = {t.record.meta["node"]: t.verdict
              for t in labelled_trajectories(outcomes) if t.record.origin == "tree"}  # fmt: skip
    assert judged == {1: 0.0, 3: 1.0}
    with pytest.raises(ValueError, match="unresolved"):
        labelled_steps(outcomes, ScoreScale(), unresolved="maybe")


def test_a_refused_step_is_low_whatever_follows_it(tmp_path: Path) -> None:
    """A click the page refused (its row's ``last_action_error``; a live node's
    ``WebState.refused``) did nothing: it is labelled low under the default ``refused: low``
    even on a path to a success, the steps after it keep their labels, and ``tree`` (what
    held-out ranking quality uses) labels it like any other step."""
    episode = ("login", 2, 0, True, [(HOME, "Read it.", "click [21]", HOME),  # refused
                                     (HOME, "Open the form.", "click [9]", LOGIN),
                                     (LOGIN, "Submit.", "click [32]", DONE)])  # fmt: skip
    run_dir = write_episodes(tmp_path / "eval", [episode])
    rows = [json.loads(line) for line in (run_dir / "transitions.jsonl").read_text().splitlines()]
    rows[0]["last_action_error"] = "TimeoutError: element is not visible"
    (run_dir / "transitions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outcomes = read_outcomes([run_dir])
    counts: Counter[str] = Counter()
    low = labelled_steps(outcomes, ScoreScale(), refused="low", counts=counts)
    assert [(s.status, s.score, s.good) for s in low] == [
        (REFUSED, 1.0, False), (PROGRESS, 3.0, True), (SUCCESS, 5.0, True)]  # fmt: skip
    assert counts["refused"] == 1
    assert [s.status for s in labelled_steps(outcomes, ScoreScale())] == [
        PROGRESS, PROGRESS, SUCCESS]  # fmt: skip
    assert parse_reward(reward_target(REFUSED, ScoreScale())).value.score == 1.0
    reward = build_mix("reward", {"episodes": [str(run_dir)], "seed": 0}, model_cfg=MODEL)
    assert [e.meta["status"] for e in reward] == [REFUSED, PROGRESS, SUCCESS]
    as_tree = {"episodes": [str(run_dir)], "seed": 0, "reward": {"refused": "tree"}}
    assert build_mix("reward", as_tree, model_cfg=MODEL)[0].meta["status"] == PROGRESS
    with pytest.raises(ValueError, match="refused must be one of"):
        labelled_steps(outcomes, ScoreScale(), refused="skip")
    # A live search node keeps the refusal through its tree record.
    state = WebState("login@2", parse_axtree(HOME)).after(
        parse_action("click [21]"), parse_axtree(HOME), refused="TimeoutError: not visible"
    )
    back = WebState.from_json("login@2", state.to_json())
    assert (back.refused, back.actions) == (state.refused, state.actions)
    assert "refused" not in WebState("login@2", parse_axtree(HOME)).to_json()


def test_prompts_are_the_ones_search_asks(trees_dir: Path) -> None:
    """Byte for byte: WebSearchPolicy.evaluate asks RewardInput(objective, history(node), page)."""
    role = student_role(MODEL, "reward")  # as train.py builds it from model=tiny
    outcomes = read_outcomes([], [trees_dir])
    examples = reward_examples(labelled_steps(outcomes, ScoreScale()), role)
    search = browser_tree()
    nodes = {node.id: node for node in search.root.walk()}
    for example in examples:
        node = nodes[example.meta["node"]]
        asked = role.messages(RewardInput(OBJECTIVE, history(node), node.state.observation))
        assert example.messages[:-1] == asked
    success = next(e for e in examples if e.meta["node"] == 3)
    judged = judge_examples(labelled_trajectories(outcomes), judge_role())
    node = nodes[3]
    asked = judge_role().messages(JudgeInput(OBJECTIVE, history(node), node.state.observation))
    assert next(e for e in judged if e.meta["node"] == 3).messages[:-1] == asked
    assert success.messages[-1]["content"].endswith("Score: 5")


@pytest.mark.parametrize("scale", [ScoreScale(), ScoreScale(0, 10), ScoreScale(0, 1)])
def test_targets_read_back_to_their_labels(scale: ScoreScale, episodes_dir: Path) -> None:
    role = reward_role(scale=scale)
    outcomes = read_outcomes([episodes_dir])
    steps = labelled_steps(outcomes, scale)
    for example in reward_examples(steps, role):
        target = example.messages[-1]["content"]
        parsed = role.parse(target, steps[0].record.question)
        assert parsed.ok and parsed.value is not None
        assert parsed.value.score == example.meta["score"]
        assert "\n" not in parsed.value.reason  # the grammar's reason is one line
    for status, score in ((SUCCESS, scale.high), (PROGRESS, scale.levels()[2]), (DEAD, scale.low)):
        assert parse_reward(reward_target(status, scale), scale).value.score == score
    for verdict in (0.0, 0.5, 1.0):
        assert parse_judge(judge_target(verdict)).value.score == verdict
    judged = judge_examples(labelled_trajectories(outcomes), judge_role())
    for example in judged:
        assert parse_judge(example.messages[-1]["content"]).value.score == example.meta["verdict"]


def test_targets_fit_the_grammars_the_tiny_model_decodes_under(tiny_model_path: Path) -> None:
    import xgrammar as xgr

    from websynthesis.backends.local import LocalBackend
    from websynthesis.roles.grammar import judge_grammar, score_grammar

    backend = LocalBackend(str(tiny_model_path), device="cpu")
    try:
        compiler = backend.grammars

        def accepts(grammar: str, text: str) -> bool:
            matcher = xgr.GrammarMatcher(compiler.compile(grammar).grammar)
            return matcher.accept_string(text) and matcher.is_completed()

        for status in (SUCCESS, PROGRESS, DEAD):
            target = reward_target(status, ScoreScale())
            assert accepts(score_grammar(1, 5), target), target
            tokens = len(backend.tokenizer(target)["input_ids"])
            assert tokens < TINY_REWARD["max_new_tokens"]  # the budget's wrap-up never cuts it
        for verdict in (0.0, 0.5, 1.0):
            assert accepts(judge_grammar(), judge_target(verdict))
    finally:
        backend.close()


def test_a_constrained_role_needs_an_integer_middle(episodes_dir: Path) -> None:
    steps = labelled_steps(read_outcomes([episodes_dir]), ScoreScale(0, 1))
    with pytest.raises(ValueError, match="integers only"):
        reward_examples(steps, reward_role(constrained=True, scale=ScoreScale(0, 1)))
    with pytest.raises(ValueError, match="reward role"):
        reward_examples(steps, judge_role())


def test_mixes_dedupe_are_deterministic_and_report_the_balance(
    episodes_dir: Path, trees_dir: Path
) -> None:
    data = {"episodes": [str(episodes_dir)], "trees": [str(trees_dir)], "seed": 0}
    counts: Counter[str] = Counter()
    reward = build_mix("reward", data, model_cfg=MODEL, counts=counts)
    # 6 episode steps (attempts 0 and 1 share their first prompt) + 3 resolved tree nodes
    assert len(reward) == 6 - 1 + 3
    assert counts["reward/dropped/duplicate"] == 1
    assert counts["reward/label/5"] == 2 and counts["reward/label/3"] == 2
    assert counts["reward/label/1"] == 4
    assert counts["reward/good"] == 4 and counts["reward/bad"] == 4
    assert all(e.meta["mix"] == "reward" for e in reward)
    assert len({tuple(m["content"] for m in e.messages) for e in reward}) == len(reward)
    judge = build_mix("judge", data, model_cfg=MODEL, counts=counts)
    assert [e.meta["verdict"] for e in judge] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert counts["judge/good"] == 2 and counts["judge/bad"] == 4
    assert build_mix("reward", data, model_cfg=MODEL) == reward  # deterministic
    assert build_mix("judge", data, model_cfg=MODEL) == judge
    balanced = build_mix("judge", {**data, "reward": {"balance": True}}, model_cfg=MODEL)
    assert Counter(e.meta["good"] for e in balanced) == {True: 2, False: 2}
    assert build_mix("judge", {**data, "reward": {"balance": True}}, model_cfg=MODEL) == balanced


def test_conflicting_labels_for_one_prompt_keep_the_highest(tmp_path: Path) -> None:
    # Two seeds of one task, the same page and thought: one succeeds, one fails.
    same = [(HOME, "Open the form.", "click [9]", LOGIN)]
    run_dir = write_episodes(tmp_path, [("login", 0, 0, False, same), ("login", 1, 0, True, same)])
    counts: Counter[str] = Counter()
    steps = labelled_steps(read_outcomes([run_dir]), ScoreScale())
    [example] = reward_examples(steps, reward_role(), counts=counts)
    assert example.meta["status"] == SUCCESS and counts["conflicts"] == 1


def test_empty_or_missing_sources_are_errors(tmp_path: Path, episodes_dir: Path) -> None:
    with pytest.raises(ValueError, match="mix 'reward' is empty"):
        build_mix("reward", {"episodes": [], "trees": []})
    with pytest.raises(ValueError, match="mix 'judge' is empty"):
        build_mix("judge", {})
    with pytest.raises(FileNotFoundError, match=r"no episodes\.jsonl"):
        read_outcomes([tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match=r"no trees\.jsonl"):
        read_outcomes([], [tmp_path / "nowhere"])
    empty = write_episodes(tmp_path / "empty", [])
    counts: Counter[str] = Counter()
    assert build_mix("reward", {"episodes": [str(empty)]}, counts=counts) == []
    assert counts["reward/empty_source"] == 1  # data, not config: the stage then fails
    # An episode whose rows disagree with its actions is left out, not guessed at.
    broken = tmp_path / "broken"
    write_episodes(broken)
    rows = (broken / "transitions.jsonl").read_text().splitlines()
    (broken / "transitions.jsonl").write_text("\n".join(rows[1:]) + "\n")
    skipped: Counter[str] = Counter()
    read_outcomes([broken], counts=skipped)
    assert skipped["episodes_skipped/steps_disagree"] == 1 and skipped["episodes"] == 3


# --- train.py end to end -----------------------------------------------------------------


def train(*overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_reward_model_experiment_trains_an_adapter_the_reward_role_serves(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    episodes = write_episodes(tmp_path / "eval")
    trees = write_trees(tmp_path / "synth")
    run_dir = tmp_path / "train"
    train(
        "+experiment=reward_model",
        "model=tiny",
        "logger=none",
        "trainer.max_steps=3",
        "data.val_fraction=0",
        "data.batch_tokens=4096",
        "data.max_length=2048",
        "trainer.enable_progress_bar=false",
        f"data.episodes=[{episodes}]",
        f"data.trees=[{trees}]",
        f"hydra.run.dir={run_dir}",
    )
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["reward/kept"] == 8 and stats["judge/kept"] == 6
    assert stats["reward/good"] == 4 and stats["judge/good"] == 2
    done = json.loads((run_dir / "stages" / "1-reward_model" / "done.json").read_text())
    assert done["global_step"] == 3

    from websynthesis.evaluation.reward_quality import main

    out = tmp_path / "reward_quality.json"
    report = main([
        "--episodes", str(episodes), "--resamples", "50", "--out", str(out), "--judge",
        "model=tiny", "logger=none", "model.backend.device=cpu",
        f"model.adapters.reward={adapter}", f"model.adapters.judge={adapter}",
    ])  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["steps"] == 6 and report["good"] == 3 and report["unscored"] == 0
    assert 0.0 <= report["model"]["auc"] <= 1.0
    assert report["constant"]["auc"] == 0.5 and report["constant"]["pairwise_accuracy"] == 0.5
    assert report["judge"]["trajectories"] == 4 and report["judge"]["unscored"] == 0
