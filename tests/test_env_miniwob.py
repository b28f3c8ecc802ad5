"""Real MiniWoB++ episodes in headless Chromium through BrowserGym, and browser failures.

One environment (one worker, one browser at a time) serves the episode tests; the crash and
hang tests get their own, since they kill its browser on purpose.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from websynthesis.config import EnvConfig
from websynthesis.env.base import EnvError, Observation
from websynthesis.env.browsergym_env import BrowserGymEnv, make_env
from websynthesis.env.miniwob import TASKS
from websynthesis.env.worker import browsergym_actions
from websynthesis.web.action_sets import action_set
from websynthesis.web.actions import Action, ActionKind, listed_options, parse_action
from websynthesis.web.observation import parse_axtree

pytestmark = [
    pytest.mark.browser,
]


@pytest.fixture(scope="module")
def env() -> Iterator[BrowserGymEnv]:
    with make_env(EnvConfig(name="miniwob", step_timeout_s=20, max_steps=5)) as live:
        yield live


def element(observation: Observation, role: str, name: str | None = None) -> str:
    """The id of the first element with this role (and name)."""
    for node in observation.tree:
        if node.role == role and (name is None or node.name == name) and node.id:
            return node.id
    raise AssertionError(f"no {role} {name!r} in\n{observation.text}")


def assert_canonical(observation: Observation) -> None:
    assert observation.tree.errors == []
    assert parse_axtree(observation.text).render() == observation.text
    assert observation.tree.render() == observation.text
    assert observation.text.startswith("Tab 0 (current): ")
    ids = [node.id for node in observation.tree]
    assert None not in ids and len(ids) == len(set(ids))


def browser_process(env: BrowserGymEnv) -> psutil.Process:
    """Chromium's main process: the Chromium in the worker's tree whose parent is not one."""
    assert env.worker_pid is not None
    tree = psutil.Process(env.worker_pid).children(recursive=True)
    chromiums = {proc.pid for proc in tree if "chrom" in proc.name()}
    return next(proc for proc in tree if proc.pid in chromiums and proc.ppid() not in chromiums)


def dies_within(process: psutil.Process, seconds: float) -> bool:
    """Whether ``process`` is gone or a zombie (dead, not yet reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_click_button_episode_is_won_by_clicking_the_named_button(env: BrowserGymEnv) -> None:
    observation = env.reset("click-button", seed=0)
    assert_canonical(observation)
    assert observation.url.endswith("/click-button.html")
    assert observation.last_action_error is None
    wanted = re.fullmatch(r'Click on the "(.+)" button\.', observation.goal)
    assert wanted, observation.goal
    button = element(observation, "button", wanted.group(1))

    result = env.step(Action(ActionKind.CLICK, target=button))

    assert (result.reward, result.done, result.error) == (1.0, True, None)
    assert result.observation.last_action_error is None
    assert_canonical(result.observation)


def test_enter_text_types_then_submits(env: BrowserGymEnv) -> None:
    observation = env.reset("enter-text", seed=1)
    word = re.search(r'"(.+)"', observation.goal)
    assert word, observation.goal
    field = element(observation, "textbox")

    typed = env.step(parse_action(f"type [{field}] [{word.group(1)}] [0]"))
    assert (typed.reward, typed.done) == (0.0, False)
    assert typed.observation.tree.get(field).props.get("value") == word.group(1)
    assert_canonical(typed.observation)

    submitted = env.step(parse_action(f"click [{element(typed.observation, 'button')}]"))
    assert (submitted.reward, submitted.done, submitted.error) == (1.0, True, None)


def test_refused_actions_are_the_agents_errors_not_crashes(env: BrowserGymEnv) -> None:
    observation = env.reset("click-button", seed=2)

    unknown = env.step(parse_action("click [9999]"))
    assert unknown.error is None and not unknown.done
    assert "unknown_id" in (unknown.observation.last_action_error or "")
    assert unknown.observation.text == observation.text

    text_node = next(node.id for node in observation.tree if node.role == "StaticText")
    on_text = env.step(parse_action(f"click [{text_node}]"))  # sent to the text's element
    assert on_text.error is None and on_text.observation.last_action_error is None

    root = observation.tree.nodes[0].id
    refused_by_page = env.step(parse_action(f"click [{root}]"))  # the page root: no element
    assert refused_by_page.error is None and not refused_by_page.done
    assert "Could not find element" in (refused_by_page.observation.last_action_error or "")

    later = env.step(parse_action("scroll [down]"))
    assert later.observation.last_action_error is None


def test_stop_ends_the_episode_and_steps_are_truncated(env: BrowserGymEnv) -> None:
    env.reset("click-button", seed=3)
    stopped = env.step(parse_action("stop [done]"))
    assert stopped.done and stopped.reward == 0.0 and stopped.error is None

    env.reset("click-button", seed=3)
    results = [env.step(parse_action("click [9999]")) for _ in range(env.max_steps)]
    assert [r.truncated for r in results] == [False] * (env.max_steps - 1) + [True]


def test_unknown_task_and_step_before_reset_are_typed_errors() -> None:
    with make_env(EnvConfig(name="miniwob")) as fresh:
        with pytest.raises(EnvError, match="reset first"):
            fresh.step(parse_action("click [1]"))
        with pytest.raises(ValueError, match="unknown MiniWoB"):
            fresh.reset("no-such-task", seed=0)


def test_a_script_without_a_main_guard_is_told_why_its_worker_died(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from websynthesis.config import EnvConfig\n"
        "from websynthesis.env.browsergym_env import make_env\n"
        "make_env(EnvConfig(name='miniwob')).reset('click-button', seed=0)\n"
    )
    ran = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, check=False
    )
    assert ran.returncode != 0
    assert "EnvError" in ran.stderr and "before answering" in ran.stderr
    assert f"if {script} uses the environment at its top level" in ran.stderr


@pytest.mark.slow
def test_killed_browser_is_an_env_error_and_the_next_reset_restarts_it() -> None:
    with make_env(EnvConfig(name="miniwob", step_timeout_s=20)) as victim:
        observation = victim.reset("click-button", seed=0)
        first_worker = victim.worker_pid
        os.kill(browser_process(victim).pid, signal.SIGKILL)

        result = victim.step(parse_action(f"click [{element(observation, 'button')}]"))

        assert result.done and result.error is not None and result.reward == 0.0
        assert result.observation is observation
        with pytest.raises(EnvError):
            victim.step(parse_action("click [1]"))  # the episode is over
        again = victim.reset("click-button", seed=0)
        assert victim.worker_pid != first_worker
        assert again.text == observation.text


@pytest.mark.slow
def test_hung_browser_times_out_is_killed_and_replaced() -> None:
    with make_env(EnvConfig(name="miniwob", step_timeout_s=3)) as victim:
        observation = victim.reset("click-button", seed=0)
        hung = browser_process(victim)
        hung.suspend()  # SIGSTOP: alive but answering nothing
        started = time.monotonic()

        result = victim.step(parse_action(f"click [{element(observation, 'button')}]"))

        assert time.monotonic() - started < 10
        assert result.done and "timed out" in (result.error or "")
        assert dies_within(hung, seconds=5)  # killed with its worker
        assert victim.reset("click-button", seed=0).text == observation.text


def test_choose_list_is_solved_by_selecting_the_option_directly(
    env: BrowserGymEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``select_option`` on a ``<select>`` (BrowserGym's call), in MiniWoB++'s declared set;
    an undeclared verb is refused as the agent's error without touching the page."""
    monkeypatch.setattr(
        env, "actions", action_set(["click", "type", "press", "select_option", "stop"])
    )
    observation = env.reset("choose-list", seed=4)
    wanted = re.fullmatch(r"Select (.+) from the list and click Submit\.", observation.goal)
    assert wanted, observation.goal
    combobox = element(observation, "combobox")
    assert wanted.group(1) in listed_options(observation.tree.get(combobox))

    refused = env.step(parse_action("go_back"))
    assert refused.error is None and not refused.done
    assert "undeclared_action" in (refused.observation.last_action_error or "")
    assert refused.observation.text == observation.text

    selected = env.step(parse_action(f"select_option [{combobox}] [{wanted.group(1)}]"))
    assert selected.observation.last_action_error is None and not selected.done
    assert_canonical(selected.observation)
    submit = element(selected.observation, "button", "Submit")
    submitted = env.step(parse_action(f"click [{submit}]"))
    assert (submitted.reward, submitted.done, submitted.error) == (1.0, True, None)


def test_actions_wait_the_configured_timeout_not_browsergyms_500_ms() -> None:
    """BrowserGym writes ``timeout=500`` into every Playwright call of its actions, which a
    valid click outlasts on a loaded machine; the worker's action code carries
    ``action_timeout_ms`` instead, as the error of a click on a hidden ``<option>`` shows."""
    code = browsergym_actions(1234).to_python_code('click("12")')
    assert "timeout=1234" in code and "timeout=500" not in code
    config = EnvConfig(name="miniwob", step_timeout_s=20, max_steps=5, action_timeout_ms=700)
    with make_env(config) as live:
        observation = live.reset("choose-list", seed=4)
        option = element(observation, "option")
        hidden = live.step(parse_action(f"click [{option}]"))
    assert hidden.error is None
    assert "Timeout 700ms exceeded" in (hidden.observation.last_action_error or "")


@pytest.mark.parametrize("task", ["enter-date", "enter-time"])
def test_a_date_or_time_input_gives_a_page_with_one_id_per_line(
    env: BrowserGymEnv, task: str
) -> None:
    # The input's spinbuttons carry its bid in BrowserGym's tree (see env/observe.py).
    observation = env.reset(task, seed=0)
    assert observation.tree.errors == []
    ids = [node.id for node in observation.tree.nodes]
    assert len(ids) == len(set(ids))
    assert re.search(r"^\t\[14\] \w+ ''$", observation.text, re.M)
    assert re.search(r"^\t\t\[T[A-Z]+14\] spinbutton ", observation.text, re.M)


def browser_value(task: str, goal: str) -> str:
    """The date or time of ``goal`` in the input's value format (what Playwright's fill takes)."""
    if task == "enter-date":
        month, day, year = re.search(r"(\d\d)/(\d\d)/(\d{4})", goal).groups()
        return f"{year}-{month}-{day}"
    hour, minute, half = re.search(r"(\d{1,2}):(\d\d) ([AP]M)", goal).groups()
    return f"{int(hour) % 12 + (12 if half == 'PM' else 0):02d}:{minute}"


@pytest.mark.parametrize("task", ["enter-date", "enter-time"])
def test_a_date_or_time_input_is_typed_in_its_value_format(env: BrowserGymEnv, task: str) -> None:
    observation = env.reset(task, seed=1)
    typed = env.step(parse_action(f"type [14] [{browser_value(task, observation.goal)}]"))
    assert typed.observation.last_action_error is None
    result = env.step(parse_action("click [15]"))
    assert (result.reward, result.done) == (1.0, True)


@pytest.mark.slow
def test_every_miniwob_task_opens_on_a_well_formed_page(env: BrowserGymEnv) -> None:
    # The tasks a user picks are any of the 125, not the handful the tests and evidence use.
    broken = {}
    for task in sorted(TASKS):
        errors = env.reset(task, seed=0).tree.errors
        if errors:
            broken[task] = [str(error) for error in errors[:3]]
    assert len(TASKS) >= 100
    assert broken == {}
