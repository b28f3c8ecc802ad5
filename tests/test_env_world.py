"""The environment pool, and the search's BrowserWorld replaying prefixes on live MiniWoB++."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from websynthesis.config import EnvConfig
from websynthesis.data.tasks import Task
from websynthesis.env.pool import EnvPool
from websynthesis.synthesis.browser_world import LiveBrowserWorld
from websynthesis.synthesis.state import WebState
from websynthesis.web.actions import parse_action

# --- the pool (its leasing logic needs no browser) -------------------------------------------


class Slot:
    """Stands in for an environment: the pool only hands it out and closes it."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_pool_runs_items_in_parallel_and_keeps_their_order() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def work(env: Slot, item: int) -> tuple[int, int]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return item, id(env)

    with EnvPool(Slot, size=3) as pool:
        results = pool.map(work, range(7))
    assert [item for item, _ in results] == list(range(7))
    assert peak[0] == 3
    assert {env_id for _, env_id in results} <= {id(env) for env in pool.envs}
    assert all(env.closed for env in pool.envs)


def test_pool_finishes_every_item_before_raising_their_errors() -> None:
    finished = []

    def work(env: Slot, item: int) -> int:
        if item % 2:
            raise RuntimeError(f"item {item}")
        finished.append(item)
        return item

    with EnvPool(Slot, size=2) as pool, pytest.raises(ExceptionGroup) as raised:
        pool.map(work, range(5))
    assert sorted(finished) == [0, 2, 4]
    assert sorted(str(error) for error in raised.value.exceptions) == ["item 1", "item 3"]


def test_lease_prefers_a_matching_idle_env_and_a_closed_pool_refuses() -> None:
    pool = EnvPool(Slot, size=3)
    wanted = pool.envs[2]
    with pool.lease(prefer=lambda env: env is wanted) as env:
        assert env is wanted
        with pool.lease(prefer=lambda env: env is wanted) as other:
            assert other is not wanted  # busy: any idle one
    pool.close()
    with pytest.raises(RuntimeError, match="closed"), pool.lease():
        pass
    with pytest.raises(ValueError, match="at least one"):
        EnvPool(Slot, size=0)


# --- BrowserWorld on a live browser ------------------------------------------------------------


def element(state: WebState, role: str) -> str:
    node = next(node for node in state.observation if node.role == role)
    assert node.id is not None
    return node.id


@pytest.mark.browser
@pytest.mark.slow
def test_replay_reaches_the_state_that_stepping_directly_reached() -> None:
    world = LiveBrowserWorld.from_config(EnvConfig(name="miniwob", step_timeout_s=20), seed=5)

    async def search() -> None:
        root = await world.reset(Task("enter-text", intent=""))
        word = re.search(r'"(.+)"', world.goals["enter-text"])
        assert word
        field = element(root, "textbox")
        right = parse_action(f"type [{field}] [{word.group(1)}] [0]")
        wrong = parse_action(f"type [{field}] [not it] [0]")

        typed = await world.step(root, right)  # the browser is already on root: direct
        assert typed.error is None and typed.env_reward == 0.0 and not typed.terminal
        assert typed.state.actions == (right,)
        assert typed.state.observation.get(field).props["value"] == word.group(1)
        assert (world.stats.direct, world.stats.replays) == (1, 0)

        other = await world.step(root, wrong)  # the browser must go back: reset
        assert other.state.observation.get(field).props["value"] == "not it"
        again = await world.step(root, right)
        assert again.state.observation.render() == typed.state.observation.render()

        await world.step(root, wrong)
        submit = parse_action(f"click [{element(typed.state, 'button')}]")
        won = await world.step(typed.state, submit)  # reset + replay of the typing
        assert won.error is None and won.env_reward == 1.0 and won.terminal
        assert world.stats.replayed_steps == 1 and world.stats.mismatches == 0

        stop = parse_action("stop [done]")
        assert (await world.step(won.state, stop)).env_reward == 1.0  # no browser involved
        assert (await world.step(typed.state, stop)).env_reward == 0.0
        assert typed.state.refused is None and won.state.refused is None

        refused = await world.step(typed.state, parse_action("click [99999]"))  # not there
        assert refused.error is None and refused.state.refused
        assert refused.state.observation.render() == typed.state.observation.render()

    try:
        asyncio.run(search())
    finally:
        world.pool.close()
    assert world.stats.failures == 0 and world.stats.resets == 1
