"""The MiniWoB++ task suite (websynthesis/env/suites.py, env=miniwob_suite): its make-up,
its config, and, on live pages, that every task's first observation differs by seed.

The browser tests share one environment (one worker; BrowserGym relaunches the browser on
every reset, which is most of their time). click-test is the negative control: its seeds
only move the button, so the same check must find its observations equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from websynthesis.config import EnvConfig, register_configs
from websynthesis.env.browsergym_env import BrowserGymEnv, make_env
from websynthesis.env.miniwob import TASKS
from websynthesis.env.suites import (
    CHECK_SEEDS,
    MINIWOB_SUITE,
    id_free_observation,
    suite_names,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def test_suite_has_eight_known_tasks_with_typing_multi_step_and_a_select() -> None:
    names = suite_names()
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert set(names) <= set(TASKS)
    assert sum(task.needs_typing for task in MINIWOB_SUITE) >= 2
    assert sum(task.multi_step for task in MINIWOB_SUITE) >= 2
    assert any("select" in task.exercises for task in MINIWOB_SUITE)
    assert not {"click-test", "click-test-2", "focus-text"} & set(names)
    for task in MINIWOB_SUITE:
        assert task.exercises and task.varies
        assert 1 <= task.steps[0] <= task.steps[1]
    assert len(CHECK_SEEDS) == len(set(CHECK_SEEDS)) == 5


def test_env_miniwob_suite_selects_the_suite_and_keeps_miniwobs_other_keys() -> None:
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            suite = compose(config_name="evaluate", overrides=["env=miniwob_suite"]).env
            plain = compose(config_name="evaluate", overrides=["env=miniwob"]).env
    finally:
        GlobalHydra.instance().clear()
    assert list(suite.tasks) == suite_names()
    suite_keys, plain_keys = OmegaConf.to_container(suite), OmegaConf.to_container(plain)
    assert {**suite_keys, "tasks": None} == {**plain_keys, "tasks": None}


def test_id_free_observation_drops_each_lines_id_and_nothing_else() -> None:
    tree = (
        "Tab 0 (current): Page\n\n"
        "[RA0] RootWebArea 'Page' focused: True\n"
        "\t[12] button '[3] Ok'\n"
        "\t\t[TA12] StaticText 'Ok'"
    )
    renumbered = tree.replace("[12]", "[40]").replace("[TA12]", "[TA40]")
    expected = (
        "Click Ok.\n\n"
        "Tab 0 (current): Page\n\n"
        "RootWebArea 'Page' focused: True\n"
        "\tbutton '[3] Ok'\n"
        "\t\tStaticText 'Ok'"
    )
    assert id_free_observation("Click Ok.", tree) == expected
    assert id_free_observation("Click Ok.", renumbered) == expected
    assert id_free_observation("Click No.", tree) != expected


@pytest.fixture(scope="module")
def env() -> Iterator[BrowserGymEnv]:
    with make_env(EnvConfig(name="miniwob", step_timeout_s=20)) as live:
        yield live


def first_observations(env: BrowserGymEnv, task: str) -> dict[int, str]:
    """Seed -> the id-free first observation of ``task`` under it."""
    observations = {}
    for seed in CHECK_SEEDS:
        observation = env.reset(task, seed=seed)
        observations[seed] = id_free_observation(observation.goal, observation.text)
    return observations


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("task", suite_names())
def test_first_observations_of_five_seeds_are_pairwise_different(
    env: BrowserGymEnv, task: str
) -> None:
    observations = first_observations(env, task)
    same = [(a, b) for a, b in combinations(CHECK_SEEDS, 2) if observations[a] == observations[b]]
    assert not same, f"{task}: seeds {same} show the same page:\n{observations[same[0][0]]}"


@pytest.mark.browser
@pytest.mark.slow
def test_click_test_seeds_only_move_the_button_so_the_check_rejects_it(
    env: BrowserGymEnv,
) -> None:
    observations = first_observations(env, "click-test")
    assert len(set(observations.values())) == 1, observations
