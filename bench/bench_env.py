"""Live-environment throughput: one browser against a pool of browsers, on MiniWoB++.

    python bench/bench_env.py [--episodes 8] [--pool 2] [--steps 3] [--tasks click-button,...]

Every episode is a real MiniWoB++ episode in headless Chromium through BrowserGym: a reset,
``--steps - 1`` scrolls (real actions with a real observation each), then the solving
action(s) read from the goal (click the named button; type the word and submit). The same
episode list runs (1) on one environment, one episode after the other, and (2) on a pool of
``--pool`` environments in parallel (:class:`~websynthesis.env.pool.EnvPool`). Workers are
started and warmed before the clock starts; their start-up is reported apart.

Reports per run: episodes/s, environment steps/s (steps over wall time, resets included),
mean reset and step latency; then the pool/one-browser throughput ratio, then one JSON line.
On a 2-core machine the ratio is bounded by the cores, not the pool: BrowserGym waits
0.5 s after each action and MiniWoB++ tasks slow Playwright by 100 ms per call, so part of
every step is idle time that a second browser can fill.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

from websynthesis.config import EnvConfig
from websynthesis.env.base import Observation, WebEnv
from websynthesis.env.browsergym_env import make_env
from websynthesis.env.pool import EnvPool
from websynthesis.web.actions import Action, parse_action


@dataclass
class Timings:
    """Latencies of one run, appended from several threads (list.append is atomic)."""

    resets: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


def solution(observation: Observation) -> list[Action]:
    """The actions that solve click-button or enter-text, read from the goal and the page."""
    quoted = re.search(r'"(.+?)"', observation.goal)
    if quoted is None:
        raise ValueError(f"no quoted target in the goal {observation.goal!r}")
    nodes = list(observation.tree)
    if observation.goal.startswith("Click"):
        button = next(n for n in nodes if n.role == "button" and n.name == quoted.group(1))
        return [parse_action(f"click [{button.id}]")]
    field_id = next(n.id for n in nodes if n.role == "textbox")
    submit = next(n.id for n in nodes if n.role == "button")
    return [
        parse_action(f"type [{field_id}] [{quoted.group(1)}] [0]"),
        parse_action(f"click [{submit}]"),
    ]


def episode(env: WebEnv, task: str, seed: int, steps: int, timings: Timings) -> int:
    """One timed episode; returns the number of steps taken."""
    started = time.perf_counter()
    observation = env.reset(task, seed)
    timings.resets.append(time.perf_counter() - started)
    actions = solution(observation)
    actions = [parse_action("scroll [down]")] * max(0, steps - len(actions)) + actions
    reward = 0.0
    for action in actions:
        started = time.perf_counter()
        result = env.step(action)
        timings.steps.append(time.perf_counter() - started)
        if result.error is not None:
            raise RuntimeError(f"{task} seed {seed}: {result.error}")
        reward = result.reward
    timings.rewards.append(reward)
    return len(actions)


def run(pool: EnvPool[WebEnv], plan: list[tuple[str, int]], steps: int) -> dict[str, float]:
    timings = Timings()
    started = time.perf_counter()
    taken = pool.map(lambda env, item: episode(env, *item, steps, timings), plan)
    wall = time.perf_counter() - started
    return {
        "browsers": pool.size,
        "episodes": len(plan),
        "wall_s": wall,
        "episodes_per_s": len(plan) / wall,
        "steps_per_s": sum(taken) / wall,
        "reset_s": statistics.mean(timings.resets),
        "step_s": statistics.mean(timings.steps),
        "success": statistics.mean(timings.rewards),
    }


def warm(pool: EnvPool[WebEnv], task: str) -> float:
    """Start every worker and browser once (in parallel); returns the wall time taken."""
    started = time.perf_counter()
    threads = [threading.Thread(target=env.reset, args=(task, 0)) for env in pool.envs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per episode (>= 2)")
    parser.add_argument("--tasks", default="click-button,enter-text")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    plan = [(tasks[i % len(tasks)], 100 + i) for i in range(args.episodes)]
    config = EnvConfig(name="miniwob", max_steps=max(args.steps, 2) + 1)
    results = []
    for size in (1, args.pool):
        with EnvPool(lambda: make_env(config), size) as pool:
            start_s = warm(pool, tasks[0])
            results.append(run(pool, plan, args.steps) | {"worker_start_s": start_s})
    one, many = results
    ratio = many["steps_per_s"] / one["steps_per_s"]
    print(f"{'browsers':>8} {'episodes/s':>10} {'steps/s':>8} {'reset s':>8} {'step s':>7} "
          f"{'success':>7} {'start s':>7}")  # fmt: skip
    for row in results:
        print(
            f"{row['browsers']:>8} {row['episodes_per_s']:>10.2f} {row['steps_per_s']:>8.2f} "
            f"{row['reset_s']:>8.2f} {row['step_s']:>7.2f} {row['success']:>7.2f} "
            f"{row['worker_start_s']:>7.2f}"
        )
    print(f"pool of {args.pool} / one browser, steps/s: {ratio:.2f}x")
    print(json.dumps({"one": one, "pool": many, "ratio": ratio}))


if __name__ == "__main__":
    main()
