"""The learning evidence's own logic: the real-step budget, first pages, replays, results.

The stages themselves are the project's pipelines (tested on their own and end to end in
tests/test_learning_evidence.py); here, what the evidence adds, on hand-made run dirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from websynthesis.data.chat import ChatExample, write_chat_jsonl
from websynthesis.env.base import EnvError, Observation, StepResult
from websynthesis.evaluation.evidence_report import goals, markdown
from websynthesis.evaluation.replay import (
    ImaginedPath,
    Replay,
    imagined_paths,
    replay,
    reproduction,
)
from websynthesis.pipelines.evidence import first_pages, live_real_steps, within_budget
from websynthesis.pipelines.evidence_results import ARMS, results
from websynthesis.pipelines.stages import StagedRun
from websynthesis.web.actions import Action, format_response, parse_action
from websynthesis.web.observation import parse_axtree

PAGE = "Tab 0 (current): Task\n\n[1] RootWebArea 'Task'\n\t[4] button 'OK'"


def write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def explore_dir(root: Path) -> Path:
    """Two tasks x two seeds x two attempts; episode (task, seed, attempt) takes seed+1 steps."""
    episodes, steps = [], []
    for attempt in (0, 1):
        for seed in (0, 1):
            for task in ("a", "b"):
                episodes.append(
                    {"task": task, "seed": seed, "attempt": attempt, "success": seed == 1}
                )
                for step in range(seed + 1):
                    steps.append(
                        {"task_id": task, "seed": seed, "attempt": attempt, "step": step,
                         "objective": f"do {task}{seed}", "observation": PAGE, "url": "file://x",
                         "action_set": ["click", "stop"], "action": "click [4]"}
                    )  # fmt: skip
    episodes.append({"task": "a", "seed": 0, "attempt": 2, "success": False, "error": "crash"})
    write_lines(root / "episodes.jsonl", episodes)
    write_lines(root / "transitions.jsonl", steps)
    return root


def test_within_budget_keeps_episodes_breadth_first_while_they_fit(tmp_path: Path) -> None:
    explore = explore_dir(tmp_path / "explore")
    # Attempt 0 costs (1+1)*2 + (1+2)*2 = 10 real steps (a reset + the steps each).
    kept = within_budget([explore], tmp_path / "real", budget=12)
    assert kept == {
        "episodes": 5, "transitions": 7, "real_steps": 12, "left_out": 4, "successes": 2
    }  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "real/transitions.jsonl").open()]
    assert {r["attempt"] for r in rows} == {0, 1}  # every first attempt before any second
    assert sum(r["attempt"] == 0 for r in rows) == 6
    everything = within_budget([explore], tmp_path / "all", budget=10**6)
    assert everything["episodes"] == 8 and everything["left_out"] == 1  # the errored one


def test_within_budget_takes_the_explorers_in_turn_and_keeps_their_keys_apart(
    tmp_path: Path,
) -> None:
    policy, clicks = explore_dir(tmp_path / "model"), explore_dir(tmp_path / "random_click")
    # Attempt 0 of both explorers costs 2 x 10 real steps: nothing of attempt 1 fits in 24.
    kept = within_budget([policy, clicks], tmp_path / "real", budget=24)
    assert kept["episodes"] == 10 and kept["real_steps"] == 24 and kept["left_out"] == 8
    episodes = [json.loads(line) for line in (tmp_path / "real/episodes.jsonl").open()]
    # explorer i's attempt a is attempt a * 2 + i: (0, 0) and (1, 1) first, then (2, 0)
    assert [(e["attempt"], e["explorer"]) for e in episodes].count((0, 0)) == 4
    assert [(e["attempt"], e["explorer"]) for e in episodes].count((1, 1)) == 4
    assert {(e["attempt"], e["explorer"]) for e in episodes} == {(0, 0), (1, 1), (2, 0)}
    keys = [(e["task"], e["seed"], e["attempt"]) for e in episodes]
    assert len(keys) == len(set(keys))
    rows = [json.loads(line) for line in (tmp_path / "real/transitions.jsonl").open()]
    assert {(r["task_id"], r["seed"], r["attempt"]) for r in rows} <= set(keys)
    assert len(rows) == kept["transitions"]


def test_first_pages_are_one_task_per_instance_with_its_state(tmp_path: Path) -> None:
    tasks = first_pages(explore_dir(tmp_path))
    assert [t.task_id for t in tasks] == ["a@0", "a@1", "b@0", "b@1"]
    assert tasks[1].intent == "do a1" and tasks[1].state == PAGE
    assert tasks[1].actions == ("click", "stop") and tasks[1].start_url == "file://x"


def test_live_real_steps_add_resets_replays_and_direct_steps(tmp_path: Path) -> None:
    world = {"resets": 6, "replays": 3, "replayed_steps": 11, "direct": 40, "mismatches": 0}
    (tmp_path / "stats.json").write_text(json.dumps({"counters": {"world": world}}))
    assert live_real_steps(tmp_path) == 57
    with pytest.raises(RuntimeError, match=r"stats\.json"):
        live_real_steps(tmp_path / "missing")


# --- replays -------------------------------------------------------------------------------


class ScriptedEnv:
    """Solves the episode on ``click [4]`` of the seed's own page; refuses ids not on it."""

    def __init__(self, fail_reset: bool = False) -> None:
        self.fail_reset = fail_reset
        self.calls: list[str] = []

    def reset(self, task: str, seed: int) -> Observation:
        self.calls.append(f"reset {task} {seed}")
        if self.fail_reset:
            raise EnvError("browser died")
        return self._observation()

    def step(self, action: Action) -> StepResult:
        self.calls.append(str(action))
        error = None if action.target in (None, "4", "5") else f"unknown_id: [{action.target}]"
        solved = action.target == "4"
        return StepResult(self._observation(error), 1.0 if solved else 0.0, solved)

    def _observation(self, error: str | None = None) -> Observation:
        return Observation(parse_axtree(PAGE), PAGE, "file://x", "OK", ("file://x",), error)

    def read_page(self, url: str | None = None, script: str | None = None) -> str:
        return ""

    def close(self) -> None:
        pass


def test_replay_outcomes() -> None:
    env = ScriptedEnv()
    won = replay(env, ImaginedPath("a@3", (parse_action("click [5]"), parse_action("click [4]"))))
    assert (won.reproduced, won.steps, won.why) == (True, 2, None)
    assert env.calls[0] == "reset a 3"
    refused = replay(env, ImaginedPath("a@3", (parse_action("click [9]"),)))
    assert (refused.reproduced, refused.why) == (False, "refused")
    stopped = replay(env, ImaginedPath("a@3", (parse_action("click [5]"), parse_action("stop []"))))
    assert (stopped.reproduced, stopped.why) == (False, "unrewarded")
    short = replay(env, ImaginedPath("b@1", (parse_action("click [5]"),)))
    assert short.why == "ran_out"
    broken = replay(ScriptedEnv(fail_reset=True), ImaginedPath("b@1", ()))
    assert broken.error == "browser died" and not broken.reproduced
    summary = reproduction([won, refused, stopped, short, broken])
    assert (summary["imagined_successes"], summary["reproduced"], summary["errors"]) == (4, 1, 1)
    assert summary["tasks"]["a"]["why"] == {"refused": 1, "unrewarded": 1}


def test_imagined_paths_read_each_trees_steps_in_depth_order(tmp_path: Path) -> None:
    def step(task: str, depth: int, action: str) -> ChatExample:
        answer = format_response("ok", parse_action(action))
        messages = ({"role": "user", "content": "q"}, {"role": "assistant", "content": answer})
        return ChatExample(messages, {"task_id": task, "depth": depth, "kind": "valuable"})

    path = tmp_path / "valuable.jsonl"
    write_chat_jsonl(
        path, [step("a@1", 2, "stop []"), step("a@1", 1, "click [4]"), step("b@0", 1, "click [5]")]
    )
    paths = imagined_paths(path)
    assert [(p.task_id, [str(a) for a in p.actions]) for p in paths] == [
        ("a@1", ["click [4]", "stop []"]),
        ("b@0", ["click [5]"]),
    ]
    assert all(p.complete for p in paths)

    gap = tmp_path / "gap.jsonl"
    write_chat_jsonl(gap, [step("a@1", 1, "click [4]"), step("a@1", 3, "stop []")])
    (incomplete,) = imagined_paths(gap)
    assert not incomplete.complete  # extraction dropped depth 2: counted, never replayed
    assert replay(None, incomplete) == Replay("a@1", False, 0, "incomplete")  # type: ignore[arg-type]

    bad = tmp_path / "bad.jsonl"
    write_chat_jsonl(bad, [step("a@1", 1, "click [4]"), ChatExample(step("a@1", 2, "stop []")
                     .messages, {"task_id": "a@1", "kind": "valuable"})])  # fmt: skip
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: meta.depth"):
        imagined_paths(bad)


def test_a_report_read_mid_run_counts_only_finished_stages(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {"tasks": ["a"], "train_seeds": [0], "eval_seeds": list(range(1000, 1010)),
         "pipeline_seeds": [0], "eval_attempts": 1, "wmla": {"arm": "bc_imagined"}}
    )  # fmt: skip
    episodes(tmp_path / "untrained", {1000})
    episodes(tmp_path / "seed_0" / "eval_bc_live", {1000, 1001}, range(1000, 1004))  # running
    (tmp_path / "state.json").write_text(json.dumps({"done": ["untrained"]}))
    found = results(cfg, tmp_path)
    assert found["arms"]["untrained"]["episodes"] == 10 and found["arms"]["untrained"]["evaluated"]
    assert found["arms"]["bc_live"]["episodes"] == 0 and not found["arms"]["bc_live"]["evaluated"]
    assert found["reproduction"]["measured"] is False
    shown = {goal.name: goal for goal in goals(found)}
    assert shown["bc_imagined within 10 points of bc_live"].holds is None
    assert shown[">= 50 % of imagined successes reproduce in the browser"].detail.endswith(
        "not run yet"
    )


def test_the_headline_goals_hold_only_if_they_hold_on_every_pipeline_seed(
    tmp_path: Path,
) -> None:
    cfg = OmegaConf.create(
        {"tasks": ["a"], "train_seeds": [0], "eval_seeds": list(range(1000, 1010)),
         "pipeline_seeds": [0, 1], "eval_attempts": 1, "wmla": {"arm": "bc_imagined"}}
    )  # fmt: skip
    episodes(tmp_path / "untrained", set())
    for seed, imagined in ((0, set(range(1000, 1009))), (1, {1000})):  # seed 1 misses
        episodes(tmp_path / f"seed_{seed}" / "eval_bc_live", set(range(1000, 1005)))
        episodes(tmp_path / f"seed_{seed}" / "eval_bc_imagined", imagined)
        write_lines(tmp_path / f"seed_{seed}" / "reproduce" / "reproduction.json",
                    [{"imagined_successes": 4, "reproduced": 2 + seed}])  # fmt: skip
    state = [
        "untrained",
        *(f"seed_{s}/eval_{a}" for s in (0, 1) for a in ("bc_live", "bc_imagined")),
    ]
    (tmp_path / "state.json").write_text(json.dumps({"done": state}))
    shown = {goal.name: goal for goal in goals(results(cfg, tmp_path))}
    beats = shown["bc_imagined >= 2x untrained and >= +20 points, McNemar p < 0.01"]
    assert beats.holds is False  # seed 0 alone would hold: 90 % vs 0 %, p = 0.0039
    assert beats.detail == (
        "seed 0: 90.0 % vs 0.0 % (+90.0 points, p = 0.0039); "
        "seed 1: 10.0 % vs 0.0 % (+10.0 points, p = 1.0000)"
    )
    assert shown["bc_imagined within 10 points of bc_live"].holds is False  # seed 1: -40
    reproduces = shown[">= 50 % of imagined successes reproduce in the browser"]
    assert reproduces.holds is True and reproduces.detail == (
        "seed 0: 2 of 4 (50.0 %); seed 1: 3 of 4 (75.0 %)"
    )


def test_staged_runs_record_each_stages_seconds_over_its_sessions(tmp_path: Path) -> None:
    ran: list[str] = []

    def fails(out: Path) -> None:
        raise RuntimeError("killed")

    stages = StagedRun(tmp_path, [], 0)
    stages.stage("a", lambda out: ran.append("a"))
    with pytest.raises(RuntimeError):
        stages.stage("b", fails)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["done"] == ["a"] and set(state["seconds"]) == {"a"} and "b" in state["open"]

    resumed = StagedRun(tmp_path, [], 0)  # a new session: "a" is done, "b" runs again
    resumed.stage("a", lambda out: ran.append("again"))
    resumed.stage("b", lambda out: ran.append("b"))
    state = json.loads((tmp_path / "state.json").read_text())
    assert ran == ["a", "b"] and state["done"] == ["a", "b"] and "open" not in state
    assert state["seconds"]["b"] >= 0.0


# --- results ------------------------------------------------------------------------------


def episodes(run: Path, wins: set[int], seeds: range = range(1000, 1010)) -> None:
    write_lines(
        run / "episodes.jsonl",
        [{"task": "a", "seed": s, "attempt": 0, "success": s in wins} for s in seeds],
    )


def test_results_pair_every_arm_on_the_same_episodes_in_the_documented_schema(
    tmp_path: Path,
) -> None:
    cfg = OmegaConf.create(
        {"tasks": ["a"], "train_seeds": [0, 1], "eval_seeds": list(range(1000, 1010)),
         "pipeline_seeds": [0], "eval_attempts": 1, "wmla": {"arm": "bc_imagined"}}
    )  # fmt: skip
    episodes(tmp_path / "untrained", {1000})
    episodes(tmp_path / "random_click", set())
    seed = tmp_path / "seed_0"
    episodes(seed / "eval_bc_live", set(range(1000, 1008)))
    episodes(seed / "eval_bc_imagined", set(range(1000, 1007)))
    episodes(seed / "eval_bc_imagined_valuable", set(range(1000, 1007)))
    episodes(seed / "eval_textui_bc_imagined", {1000, 1001})
    episodes(seed / "eval_wmla", set(range(1000, 1009)))
    episodes(seed / "eval_greedy", set(range(1000, 1004)))
    (seed / "train_textui_bc_imagined").mkdir(parents=True)
    (seed / "train_textui_bc_imagined" / "skipped.json").write_text("{}")
    write_lines(seed / "train_bc_imagined_valuable" / "same_as.json", [{"arm": "bc_imagined"}])
    stats = {"examples": {"valuable": 7, "rollback": 0,
                          "dropped": {"rollback/skipped_go_back_undeclared": 3}}}  # fmt: skip
    write_lines(seed / "imagined_search" / "stats.json", [stats])  # one line: a JSON file
    write_lines(seed / "fidelity" / "fidelity.json", [FIDELITY])
    write_lines(
        seed / "world_model_fit" / "fidelity.json", [_fidelity_row(0.8, 0.4) | {"by_action": {}}]
    )
    (seed / "real_data").mkdir()
    (seed / "real_data" / "budget.json").write_text(json.dumps({"budget": 90, "real_steps": 88}))
    (tmp_path / "state.json").write_text(json.dumps(
        {"done": ["untrained", "random_click", "seed_0/live_search",
                  *(f"seed_0/eval_{arm}" for arm in ("bc_live", "bc_imagined", "wmla",
                    "bc_imagined_valuable", "textui_bc_imagined", "greedy"))],
         "seconds": {"untrained": 120.0, "seed_0/eval_bc_live": 60.0,
                     "seed_0/live_search": 300.0}}))  # fmt: skip
    (seed / "reward_quality").mkdir()
    (seed / "reward_quality" / "reward_quality.json").write_text(json.dumps(REWARD_QUALITY))
    found = results(cfg, tmp_path)
    assert set(found["arms"]) == set(ARMS)
    assert found["reward_model"]["model"]["auc"] == 0.75
    assert found["reward_model"]["judge"] == {
        "trajectories": 8, "succeeded": 2, "auc": 0.5, "auc_bootstrap_95": None,
        "constant_auc": 0.5,
    }  # fmt: skip
    assert found["arms"]["bc_imagined"] | {} == found["arms"]["bc_imagined_valuable_rollback"]
    assert found["arms"]["bc_live"]["successes"] == 8 and found["arms"]["bc_live"]["episodes"] == 10
    assert found["arms"]["textui_bc_imagined"]["trained"] is False
    assert found["paired"]["bc_imagined_vs_untrained"]["only_a"] == 6
    assert found["paired"]["bc_imagined_vs_bc_live"]["only_b"] == 1
    assert found["reproduction"] == {
        "imagined_successes": 0, "reproduced": 0, "tasks": {}, "measured": False
    }  # fmt: skip
    assert found["pipeline_seed_runs"]["0"]["real_steps"]["bc_imagined"] == 88
    assert found["arms"]["bc_imagined_valuable"]["same_data_as"] == "bc_imagined"
    assert found["arms"]["bc_live"]["same_data_as"] is None
    assert found["pipeline_seed_runs"]["0"]["trajectories"] == {
        "live_search": None,  # no stats.json: not searched
        "imagined_search": {"valuable": 7, "rollback": 0,
                            "dropped": {"rollback/skipped_go_back_undeclared": 3}},
    }  # fmt: skip
    for key in ("tasks", "train_seeds", "eval_seeds", "wall_time_min", "world_model", "rounds"):
        assert key in found
    shown = {goal.name: goal.holds for goal in goals(found)}
    assert shown["train and held-out seeds are disjoint"] is True
    assert shown[">= 50 % of imagined successes reproduce in the browser"] is None
    assert shown["wmla >= +5 points over the same policy without it"] is True
    assert found["paired"]["wmla_vs_greedy"]["only_a"] == 5  # seeds 1004-1008
    wmla_goal = next(g for g in goals(found) if g.name.startswith("wmla"))
    assert wmla_goal.detail.endswith("; greedy, no look-ahead 40.0 % (p = 0.0625)")
    page = markdown(
        found, command="python scripts/learning_evidence.py", machine="2 CPUs", plots={}
    )
    assert "| BC on live-MCTS trajectories (`bc_live`) | 8/10 | 80.0 %" in page
    assert "(no data: untrained)" in page
    assert "(`bc_imagined_valuable`) (= `bc_imagined`: the same training data) | 7/10" in page
    assert "| 0 | imagined_search | 7 | 0 | rollback/skipped_go_back_undeclared 3 |" in page
    assert "| reward model | 0.750 | [0.600, 0.900] | 0.700 (10) |" in page
    assert "| click | 10 | 0.300 | 0.400 | -0.100 | 0.900 / 0.950 | 0.500 (4) | 0.167 (6) |" in page
    assert "| all, its own training steps | 10 | 0.800 | 0.400 | +0.400 |" in page
    assert "| constant score | 0.500 | - | 0.500 (10) |" in page
    assert found["stage_minutes"] == {"untrained": 2.0, "seed_0/eval_bc_live": 1.0,
                                      "seed_0/live_search": 5.0}  # fmt: skip
    assert "| MCTS in the browser | 5.0 | 62.5 % |" in page
    assert "| evaluate held-out episodes | 3.0 | 37.5 % |" in page


def _ranking(auc: float, boot: list[float] | None, sibling: float) -> dict[str, object]:
    return {"auc": auc, "auc_bootstrap_95": boot, "sibling_pairwise_accuracy": sibling,
            "sibling_pairs": 10}  # fmt: skip


REWARD_QUALITY = {
    "steps": 40, "good": 6, "unscored": 1,
    "model": _ranking(0.75, [0.6, 0.9], 0.7),
    "constant": _ranking(0.5, None, 0.5),
    "shallower_is_better": _ranking(0.6, [0.5, 0.7], 0.55),
    "judge": {"trajectories": 8, "succeeded": 2,
              "model": {"auc": 0.5, "auc_bootstrap_95": None},
              "constant": {"auc": 0.5, "auc_bootstrap_95": None}},
}  # fmt: skip


@pytest.mark.parametrize("profile", ["full", "mini"])
def test_the_evidence_profiles_compose_with_their_schema(profile: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from websynthesis.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="learning_evidence", overrides=[f"evidence={profile}"])
        with pytest.raises(Exception, match="pipeline_seed"):
            compose(config_name="learning_evidence", overrides=["pipeline_seed=[1]"])
        # the co-evolution stage composes its own config with the profile's overrides
        coevolve = compose(config_name="coevolve", overrides=list(cfg.coevolve.overrides))
    GlobalHydra.instance().clear()
    assert not set(cfg.train_seeds) & set(cfg.eval_seeds)
    assert cfg.wmla.arm == "bc_imagined" and cfg.pipeline_seeds
    assert coevolve.warm_start.models == (["world_model"] if profile == "full" else [])
    if profile == "full":  # the sizes: >= 160 episodes an arm, 2 pipeline seeds
        assert len(cfg.tasks) * len(cfg.eval_seeds) * cfg.eval_attempts >= 160
        assert len(cfg.pipeline_seeds) >= 2


def test_the_full_profile_runs_the_task_suite() -> None:
    """docs/results.md is measured on the suite whose text differs by seed (env/suites.py)."""
    from websynthesis.env.suites import suite_names

    full = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/evidence/full.yaml")
    assert list(full.tasks) == suite_names()


def test_coevolution_copies_round_zeros_jobs_the_evidence_already_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 0's baseline is the untrained arm and its search the first seed's live search
    (the same jobs: attempts included); a stage not finished here is run there."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from websynthesis.config import register_configs
    from websynthesis.pipelines import coevolve
    from websynthesis.pipelines.evidence import Evidence

    seen: list[Any] = []
    monkeypatch.setattr(coevolve, "run", seen.append)
    register_configs()
    GlobalHydra.instance().clear()
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            config_name="learning_evidence",
            overrides=["evidence=mini", f"paths.output_dir={tmp_path}", "eval_attempts=2"],
        )
        evidence = Evidence(cfg)
        evidence.stages.done += ["untrained", "seed_0/live_search"]
        evidence._coevolve(tmp_path / "coevolve")
        evidence.stages.done.remove("seed_0/live_search")
        evidence._coevolve(tmp_path / "coevolve")
    GlobalHydra.instance().clear()
    both, one = seen
    assert dict(both.reuse) == {
        "round_0/baseline": str(tmp_path / "untrained"),
        "round_0/search": str(tmp_path / "seed_0" / "live_search"),
    }
    assert dict(one.reuse) == {"round_0/baseline": str(tmp_path / "untrained")}
    assert both.overrides.evaluate[0] == "eval.attempts=2"


def _fidelity_row(change_f1: float, copy_f1: float) -> dict[str, Any]:
    return {"model": {"change_f1": change_f1, "transitions": 10, "f1_content": 0.9},
            "copy_baseline": {"change_f1": copy_f1, "f1_content": 0.95},
            "by_change": {"unchanged": {"n": 4, "model_change_f1": 0.5},
                          "changed": {"n": 6, "model_change_f1": 1 / 6}}}  # fmt: skip


FIDELITY = _fidelity_row(0.3, 0.4) | {"by_action": {"click": _fidelity_row(0.3, 0.4)}}
