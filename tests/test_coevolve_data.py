"""Co-evolution's data: live episodes -> policy examples, imagined trajectories, the report."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from websynthesis.config import CoevolveConfig, register_configs
from websynthesis.data.chat import ChatExample
from websynthesis.data.episodes import episode_examples, read_episodes
from websynthesis.evolution import report
from websynthesis.evolution.imagine import ImagineSettings, Query, imagine
from websynthesis.pipelines.coevolve import LATER_ROUNDS, ROUND_ZERO, CoEvolution
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.roles.parsing import Decision
from websynthesis.roles.prompts import PolicyInput, Step
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import parse_axtree

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

PAGE = """Tab 0 (current): Enter Text Task

[RA0] RootWebArea 'Enter Text Task' focused: True
\t[14] textbox ''
\t[15] button 'Submit'"""
TYPED = """Tab 0 (current): Enter Text Task

[RA0] RootWebArea 'Enter Text Task' focused: True
\t[14] textbox '' focused: True value: Myron
\t\t[TB14] StaticText 'Myron'
\t[15] button 'Submit'"""
GOAL = 'Enter "Myron" into the text field and press Submit.'


def step_row(task: str, seed: int, attempt: int, step: int, page: str, action: str, after: str):
    return {
        "observation": page,
        "action": action,
        "next_observation": after,
        "history": [],
        "task_id": task,
        "imagined": False,
        "source": "evaluate",
        "seed": seed,
        "attempt": attempt,
        "step": step,
        "objective": GOAL,
        "allowed_sites": [],
        "thought": f"Step {step}: I act on the form.",
    }


def episode(task: str, seed: int, success: bool | None, actions: list[str], error=None):
    return {"task": task, "seed": seed, "attempt": 0, "success": success, "error": error,
            "actions": actions, "reward": 1.0 if success else 0.0}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """An evaluate.py run dir: a success (whose first run was cut by a browser crash and ran
    again), a failure, one whose steps disagree with its actions, one still in error."""
    typed = "type [14] [Myron] [0]"
    transitions = [
        step_row("enter-text", 1, 0, 0, PAGE, typed, TYPED),  # the crashed first run
        step_row("enter-text", 1, 0, 0, PAGE, typed, TYPED),  # the rerun, whole
        step_row("enter-text", 1, 0, 2, TYPED, "click [15]", TYPED),  # step 1 failed to parse
        step_row("enter-text", 2, 0, 0, PAGE, "click [15]", PAGE),
        step_row("enter-text", 3, 0, 0, PAGE, "click [14]", PAGE),
        step_row("enter-text", 4, 0, 0, PAGE, "click [15]", PAGE),
    ]
    episodes = [
        episode("enter-text", 1, None, [typed], error="the browser worker died"),
        episode("enter-text", 1, True, [typed, "<no_action>", "click [15]"]),
        episode("enter-text", 2, False, ["click [15]"]),
        episode("enter-text", 3, True, ["click [15]"]),  # rows say click [14]
        episode("enter-text", 4, None, ["click [15]"], error="hung"),
    ]
    write_jsonl(tmp_path / "transitions.jsonl", transitions)
    write_jsonl(tmp_path / "episodes.jsonl", episodes)
    return tmp_path


def policy_role() -> Role:
    return Role("policy", RoleSettings(template="policy", constrained=True))


def test_accepted_episodes_become_the_agents_own_prompts(run_dir: Path) -> None:
    episodes = read_episodes(run_dir)
    assert sorted(e.key for e in episodes) == [("enter-text", s, 0) for s in (1, 2, 3)]
    counts: Counter[str] = Counter()
    role = policy_role()
    examples = episode_examples(episodes, role, counts=counts, source=str(run_dir))
    assert counts == Counter(accepted=1, rejected=1, examples=2, **{"dropped/steps_disagree": 1})
    first, second = examples
    typed = parse_action("type [14] [Myron] [0]")
    assert [e.meta["step"] for e in examples] == [0, 2]
    assert all(e.meta["task_id"] == "enter-text" and e.meta["seed"] == 1 for e in examples)
    page, after = parse_axtree(PAGE), parse_axtree(TYPED)
    expected = role.messages(PolicyInput(GOAL, page))
    assert first.messages[:-1] == expected
    history = (Step(page, "Step 0: I act on the form.", typed),)
    assert second.messages[:-1] == role.messages(PolicyInput(GOAL, after, history))
    for example, action in zip(examples, [typed, parse_action("click [15]")], strict=True):
        parsed = role.parse(example.messages[-1]["content"], PolicyInput(GOAL, page))
        assert parsed.ok and isinstance(parsed.value, Decision)
        assert parsed.value.action == action


def test_an_action_the_page_does_not_allow_is_not_learnt(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "transitions.jsonl").read_text().splitlines()]
    rows[2]["action"] = "click [99]"  # not on the page the prompt shows
    write_jsonl(run_dir / "transitions.jsonl", rows)
    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    records[1]["actions"][-1] = "click [99]"
    write_jsonl(run_dir / "episodes.jsonl", records)
    counts: Counter[str] = Counter()
    assert episode_examples(read_episodes(run_dir), policy_role(), counts=counts) == []
    dropped = {"dropped/steps_disagree": 1, "dropped/invalid_action/unknown_id": 1}
    assert +counts == Counter(rejected=1, **dropped)


def coevolve_cfg(**changes):
    """A driver config with its schema's defaults (no Hydra run needed)."""
    base = {"tasks": ["click-test"], "train_seeds": [0, 1], "eval_seeds": [1000]}
    base |= {"paths": {"output_dir": "/nonexistent"}, "rounds": 1}
    return OmegaConf.merge(OmegaConf.structured(CoevolveConfig), base, changes)


def test_training_and_held_out_seeds_must_not_meet() -> None:
    with pytest.raises(ValueError, match=r"seeds \[1\] are both"):
        CoEvolution(coevolve_cfg(eval_seeds=[1, 1000]))
    with pytest.raises(ValueError, match="must both list seeds"):
        CoEvolution(coevolve_cfg(eval_seeds=[]))


def test_a_round_without_accepted_trajectories_keeps_the_last_policy(tmp_path: Path) -> None:
    """A search that solved nothing gives no policy data: the round trains nothing, says why
    in its metrics, and later stages use the newest adapter there is."""
    cfg = coevolve_cfg(paths={"output_dir": str(tmp_path)}, logger={})
    run = CoEvolution(cfg)
    found = tmp_path / "round_0/search/trajectories"
    found.mkdir(parents=True)
    for kind in cfg.search_trajectories:
        (found / f"{kind}.jsonl").write_text("", encoding="utf-8")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        run._policy(0, run.dir(0, "policy"))
    GlobalHydra.instance().clear()
    assert not (tmp_path / "round_0/policy/adapter").exists()
    row = run._round_metrics(0)
    assert row["policy_data"]["examples"] == 0 and row["policy_data"]["search/valuable"] == 0
    assert row["policy_skipped"] == {"skipped": "no accepted trajectories", "kept_adapter": None}
    assert run._model_overrides(1)[0] == "model.adapters.policy=null"
    (tmp_path / "round_0/policy/adapter").mkdir()  # an earlier round's training
    assert run._model_overrides(1)[0] == f"model.adapters.policy={tmp_path}/round_0/policy/adapter"


def test_warm_started_rounds_continue_the_last_rounds_adapter(tmp_path: Path) -> None:
    warm = {"models": ["world_model"], "world_model": ["curriculum.stages.0.max_steps=5"]}
    run = CoEvolution(coevolve_cfg(paths={"output_dir": str(tmp_path)}, warm_start=warm))
    assert run._warm_start(1, "world_model") == []  # nothing trained yet: from scratch
    (tmp_path / "round_0/world_model/adapter").mkdir(parents=True)
    (tmp_path / "round_0/policy/adapter").mkdir(parents=True)
    assert run._warm_start(0, "world_model") == []  # round 0 always starts fresh
    assert run._warm_start(2, "world_model") == [  # round 1 trained none: the newest one
        f"init_adapter={tmp_path}/round_0/world_model/adapter",
        "curriculum.stages.0.max_steps=5",
    ]
    assert run._warm_start(1, "policy") == []  # not listed: retrained from scratch
    with pytest.raises(ValueError, match=r"warm_start\.models"):
        CoEvolution(coevolve_cfg(warm_start={"models": ["judge"]}))


def test_the_coevolve_config_composes_with_its_schema() -> None:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="coevolve", overrides=["rounds=1"])
        with pytest.raises(Exception, match="imagin"):
            compose(config_name="coevolve", overrides=["imagin.max_steps=3"])
    GlobalHydra.instance().clear()
    assert cfg.rounds == 1 and len(cfg.tasks) >= 5
    assert not set(cfg.train_seeds) & set(cfg.eval_seeds)
    assert "model=tiny" in cfg.overrides.common


# --- imagined trajectories ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_config: Callable[..., DictConfig]) -> Iterator[ModelClient]:
    model = tiny_model_config(
        "model.roles.world_model.template=world_model_delta",
        "model.roles.world_model.max_new_tokens=160",
        "model.roles.policy.max_new_tokens=64",
        "model.roles.judge.max_new_tokens=24",
    )
    client = ModelClient.from_config(model)
    yield client
    client.close()


@pytest.mark.slow
def test_imagined_trajectories_are_counted_and_valid(tiny: ModelClient) -> None:
    queries = [Query(f"enter-text@{i}", GOAL, parse_axtree(PAGE)) for i in range(3)]
    config = ImagineSettings(max_steps=2, threshold=0.0)
    examples, stats = asyncio.run(imagine(tiny, queries, config))
    outcomes = stats.outcomes
    assert sum(outcomes.values()) == len(queries), outcomes  # every query has one outcome
    assert len({e.meta["task_id"] for e in examples}) == outcomes["accepted"]
    role = tiny.role("policy")
    for example in examples:
        assert isinstance(example, ChatExample) and example.meta["imagined"] is True
        assert example.messages[-1]["role"] == "assistant"
        assert example.meta["action"] in example.messages[-1]["content"]
        if example.meta["step"] == 0:  # the first page is the query's: the prompt is known
            expected = role.messages(PolicyInput(GOAL, parse_axtree(PAGE)))
            assert example.messages[:-1] == expected
            parsed = role.parse(
                example.messages[-1]["content"], PolicyInput(GOAL, parse_axtree(PAGE))
            )
            assert parsed.ok and parsed.value.action.to_string() == example.meta["action"]
    again, _ = asyncio.run(imagine(tiny, queries, config))  # seeded: a rerun imagines the same
    assert [e.messages for e in again] == [e.messages for e in examples]


# --- the report --------------------------------------------------------------------------


def metrics() -> dict:
    fidelity = {
        "model": {"change_f1": 0.81, "f1_id": 0.95},
        "copy_baseline": {"change_f1": 0.73, "f1_id": 0.96},
        "transitions": 120,
        "by_action": {
            "click": {
                "model": {"transitions": 7, "change_f1": 0.6, "f1_id": 0.9},
                "copy_baseline": {"transitions": 7, "change_f1": 0.0, "f1_id": 0.9},
            }
        },
    }
    return {
        "tasks": ["click-test", "focus-text"],
        "train_seeds": [0, 1, 2],
        "eval_seeds": [1000, 1001],
        "rounds": {
            "0": {"baseline_success_rate": 0.1, "baseline_tasks": {"click-test": 0.2},
                  "success_rate": 0.5, "tasks": {"click-test": 0.8, "focus-text": 0.2},
                  "fidelity": fidelity, "policy_data": {"examples": 9, "search/valuable": 9}},
            "1": {"success_rate": 0.6, "tasks": {"click-test": 0.9, "focus-text": 0.3},
                  "fidelity": fidelity, "imagine": {"queries": 4, "outcomes": {"accepted": 1}},
                  "policy_data": {"examples": 15, "search/valuable": 9, "live/accepted": 3}},
        },
    }  # fmt: skip


def test_report_checks_the_three_claims() -> None:
    found = {check.name: check for check in report.checks(metrics())}
    assert all(check.passed for check in found.values()), found
    assert len(found) == 4
    worse = metrics()
    worse["rounds"]["1"]["fidelity"] = {
        "model": {"change_f1": 0.5, "f1_id": 0.90},
        "copy_baseline": {"change_f1": 0.73, "f1_id": 0.96},
    }
    worse["rounds"]["0"]["success_rate"] = 0.15
    worse["eval_seeds"] = [2, 1000]
    assert [check.passed for check in report.checks(worse)] == [False] * 4


def test_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    report.plot_success(metrics(), tmp_path / "success.png")
    report.plot_fidelity(metrics(), tmp_path / "fidelity.png")
    for name in ("success.png", "fidelity.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.markdown(
        metrics(), command="python x", wall_time_s=600, machine="2 cores",
        plots={"success": "success.png", "fidelity": "fidelity.png"},
    )  # fmt: skip
    assert "| round 0: BC on MCTS-found | 50.0% | 80.0% | 20.0% |" in text
    assert "| untrained (constrained decoding) | 10.0% | 20.0% | – |" in text
    assert "0.810 / 0.730" in text and "![success per round](success.png)" in text
    assert "| 1 | 15 | 9 | 3 | 1/4 |" in text
    assert "| click | 7 | 0.600 / 0.000 | 0.900 / 0.900 |" in text


class RecordingRun(CoEvolution):
    """The driver's bookkeeping with stages that only record they ran (and may crash)."""

    crash_at: str | None = None

    def __init__(self, cfg, calls: list[str]) -> None:
        super().__init__(cfg)
        self.calls = calls
        for stage in {*ROUND_ZERO, *LATER_ROUNDS}:
            setattr(self, f"_{stage}", self._recorder(stage))

    def _recorder(self, stage: str):
        def run(round_index: int, out: Path) -> None:
            name = f"round_{round_index}/{stage}"
            self.calls.append(name)
            if name == self.crash_at:
                raise KeyboardInterrupt  # what a kill looks like from inside
            out.mkdir(parents=True, exist_ok=True)

        return run


def test_a_killed_run_resumes_at_the_stage_it_was_in(tmp_path: Path) -> None:
    cfg = coevolve_cfg(paths={"output_dir": str(tmp_path)}, rounds=2, logger={})
    calls: list[str] = []
    RecordingRun.crash_at = "round_1/imagine"
    with pytest.raises(KeyboardInterrupt):
        RecordingRun(cfg, calls).run()
    before = list(calls)
    assert before[-1] == "round_1/imagine" and len(before) == len(ROUND_ZERO) + 4
    RecordingRun.crash_at = None
    calls.clear()
    metrics = RecordingRun(cfg, calls).run()
    assert calls[0] == "round_1/imagine"  # nothing finished is redone
    assert calls == ["round_1/imagine", "round_1/fidelity", "round_1/evaluate"] + [
        f"round_2/{stage}" for stage in LATER_ROUNDS
    ]
    assert sorted(metrics["rounds"]) == ["0", "1", "2"]
    done = json.loads((tmp_path / "state.json").read_text())["done"]
    assert len(done) == len(set(done)) == len(ROUND_ZERO) + 2 * len(LATER_ROUNDS)


def test_round_zeros_baseline_and_search_can_be_handed_over_by_another_run(
    tmp_path: Path,
) -> None:
    """The learning evidence already ran round 0's baseline and live search as the same jobs:
    they are copied in (and say from where), not run again; the rest runs as ever."""
    done = {stage: tmp_path / "elsewhere" / stage for stage in ("untrained", "live_search")}
    for path in done.values():
        (path / "trajectories").mkdir(parents=True)
        (path / "trajectories" / "valuable.jsonl").write_text("{}\n", encoding="utf-8")
    reuse = {"round_0/baseline": str(done["untrained"]), "round_0/search": str(done["live_search"])}
    out = tmp_path / "run"
    cfg = coevolve_cfg(paths={"output_dir": str(out)}, rounds=1, logger={}, reuse=reuse)
    calls: list[str] = []
    RecordingRun(cfg, calls).run()
    assert calls == [f"round_0/{s}" for s in ROUND_ZERO if s not in ("baseline", "search")] + [
        f"round_1/{stage}" for stage in LATER_ROUNDS
    ]
    copied = out / "round_0" / "search"
    assert (copied / "trajectories" / "valuable.jsonl").read_text() == "{}\n"
    assert json.loads((copied / "reused.json").read_text()) == {"from": str(done["live_search"])}
    assert "round_0/baseline" in json.loads((out / "state.json").read_text())["done"]
    with pytest.raises(ValueError, match=r"reuse: \['round_1/policy'\]"):
        CoEvolution(coevolve_cfg(reuse={"round_1/policy": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"reuse\.round_0/search: .* is not a directory"):
        CoEvolution(coevolve_cfg(reuse={"round_0/search": str(tmp_path / "missing")}))
