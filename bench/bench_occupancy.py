"""Occupancy of a continuous-batching server under synthesis: the wave engine against streaming.

    python bench/bench_occupancy.py [--trees 64] [--capacity 32] [--iterations 6]
        [--in-flight 1 2]

Why: on a GPU, users serve synthesis from vLLM or SGLang, which batch continuously: a
request joins the running decode at the next step. What the server can do then depends on
what the client keeps in flight. The wave engine (the batcher in front of the backend sends a
wave, and the next one when it has returned) leaves the server's batch to drain down to the
longest answer of every wave; streaming (``model.batching.max_concurrent``: every tree's next
requests go out as soon as its own are answered) keeps it fed.

The server is our own (``websynthesis.server``, real HTTP, the OpenAI protocol) with a
stand-in engine behind it: :class:`SimulatedEngine` admits requests between steps up to
``--capacity`` rows (a request of ``n`` samples is ``n`` rows), takes one token per row per
step, and sleeps ``step_ms + row_ms * rows`` per step (a step's cost growing with the
batch). Answers come from a table (a policy action, the task's page, a score) so the search is
the real one (client, world model, policy, engine over the OpenAI backend; each tree's task
its own, so no two trees send the same request); their lengths in
tokens are drawn per request from a seeded hash (policy 24-64, world model 120-400, reward
6-12), the spread that makes waves wait.

Reported per mode: the share of the server's steps at full batch while work remains (a step
is full when no waiting request would fit; work remains while at least ``capacity / 2``
trees are still searching, each keeping two rows or more in flight), the mean rows per step,
and node expansions per second; the two modes side by side in one run. ``--in-flight`` runs
streaming once per value of ``search.in_flight_per_tree`` (iterations of one tree in flight at
once, under virtual loss: more rows offered per tree, at the cost of trees that depend on
timing); the wave engine keeps one, its reproducible setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench_synthesis import Table, compose_config, tasks

from websynthesis.backends.openai_backend import OpenAIBackend
from websynthesis.backends.stack import build_stack
from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.data.tasks import load_tasks
from websynthesis.roles.client import ModelClient
from websynthesis.search import SearchEngine
from websynthesis.server import build_app, serve_in_background
from websynthesis.synthesis import (
    ModelWorld,
    WebSearchPolicy,
    WebState,
    engine_settings,
    search_settings,
)

LENGTHS = {"policy": (24, 64), "world_model": (120, 400), "reward": (6, 12)}


@dataclass
class _Request:
    generation: Generation
    left: list[int]  # tokens each row still has to take
    future: asyncio.Future[Generation]


@dataclass
class SimulatedEngine:
    """A continuous-batching engine's timing behind our server (see the module docstring)."""

    table: Table
    capacity: int
    step_s: float
    row_s: float
    trees_left: list[int]  # [trees still searching], kept by the bench
    # The role of a request, by its token budget: the protocol does not carry our roles.
    roles: dict[int, str] = field(default_factory=dict)
    steps: list[tuple[int, bool, int]] = field(default_factory=list)  # rows, full, trees left
    concurrent_batches: int = 1024  # every call goes straight in: the engine admits by step
    cache_identity: str = "simulated"
    _waiting: deque[_Request] = field(default_factory=deque)
    _running: list[_Request] = field(default_factory=list)
    _loop: asyncio.Task[None] | None = None

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        loop = asyncio.get_running_loop()
        requests = [replace(r, role=self.roles[r.sampling.max_new_tokens]) for r in requests]
        answers = await self.table.agenerate(requests)
        futures = []
        for request, answer in zip(requests, answers, strict=True):
            low, high = LENGTHS[request.role]
            key = json.dumps([request.messages, request.sampling.seed], sort_keys=True)
            lengths = [
                low + zlib.crc32(f"{key}#{j}".encode()) % (high - low + 1)
                for j in range(request.sampling.n)
            ]
            answer.completion_tokens = sum(lengths)
            self._waiting.append(_Request(answer, lengths, loop.create_future()))
            futures.append(self._waiting[-1].future)
        if self._loop is None or self._loop.done():
            self._loop = loop.create_task(self._serve())
        return list(await asyncio.gather(*futures))

    async def _serve(self) -> None:
        while self._waiting or self._running:
            rows = sum(len(r.left) for r in self._running)
            while self._waiting and (
                not self._running or rows + len(self._waiting[0].left) <= self.capacity
            ):
                admitted = self._waiting.popleft()
                self._running.append(admitted)
                rows += len(admitted.left)
            full = rows >= self.capacity or bool(self._waiting)
            self.steps.append((rows, full, self.trees_left[0]))
            await asyncio.sleep(self.step_s + self.row_s * rows)
            for request in self._running:
                request.left = [t - 1 for t in request.left if t > 1]
                if not request.left:
                    request.future.set_result(request.generation)
            self._running = [r for r in self._running if r.left]

    def close(self) -> None:
        pass


def run_mode(args: argparse.Namespace, streaming: bool, in_flight: int = 1) -> dict[str, Any]:
    """One synthesis search over HTTP against a fresh simulated engine."""
    task = load_tasks("demo")[0]
    assert task.state is not None
    table = Table(task.state, ["click [21]", "click [22]", "type [15] [Le Guin] [1]", "click [16]"])
    cfg = compose_config(
        "model=tiny",
        "search=small",
        f"search.iterations={args.iterations}",
        f"search.concurrent_trees={args.trees}",
        f"search.in_flight_per_tree={in_flight}",
        "search.time_limit_s=null",
        f"model.batching.max_concurrent={1024 if streaming else 1}",
        "model.batching.max_batch_size=1024",
    )
    roles = {int(cfg.model.roles[role].max_new_tokens): role for role in LENGTHS}
    assert len(roles) == len(LENGTHS), "the roles' token budgets must tell them apart"
    trees_left = [args.trees]
    engine_sim = SimulatedEngine(
        table, args.capacity, args.step_ms / 1000, args.row_ms / 1000, trees_left, roles=roles
    )
    app = build_app(engine_sim, ["sim"], batch_window_ms=2.0, max_batch_size=1024)
    with serve_in_background(app) as url:
        remote = OpenAIBackend(
            "sim",
            base_url=f"{url}/v1",
            api_key_env=None,
            max_concurrency=1024,
            on_unsupported_grammar="ignore",
        )
        stack = build_stack(cfg.model, backend=remote)
        client = ModelClient.from_config(cfg.model, backend=stack.backend)
        policy = WebSearchPolicy(client)

        def done(_: str, __: Any) -> None:
            trees_left[0] -= 1

        search: SearchEngine[WebState, Any] = SearchEngine(
            ModelWorld(client),
            policy,
            search_settings(cfg.search, policy.scale, int(cfg.seed)),
            engine_settings(cfg.search, cfg.model.batching),
            on_tree_done=done,
        )
        start = time.perf_counter()
        results = search.run(tasks(args.trees, distinct=True))
        seconds = time.perf_counter() - start
        remote.close()
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    working = [s for s in engine_sim.steps if s[2] * 2 >= args.capacity]
    expansions = sum(r.stats.expansions for r in results)
    assert stack.batcher is not None
    return {
        "dedup_hits": stack.batcher.stats.dedup_hits,
        "steps": len(engine_sim.steps),
        "steps_while_work_remains": len(working),
        "full_while_work_remains": sum(full for _, full, _ in working) / max(1, len(working)),
        "full_all_steps": sum(full for _, full, _ in engine_sim.steps) / len(engine_sim.steps),
        "mean_rows_per_step": statistics.mean(rows for rows, _, _ in engine_sim.steps),
        "expansions": expansions,
        "seconds": seconds,
        "expansions_per_s": expansions / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--capacity", type=int, default=32, help="the engine's rows per step")
    parser.add_argument("--iterations", type=int, default=6, help="search iterations per tree")
    parser.add_argument("--step-ms", type=float, default=3.0, help="a step's fixed cost")
    parser.add_argument("--row-ms", type=float, default=0.05, help="a step's cost per row")
    parser.add_argument(
        "--in-flight", type=int, nargs="+", default=[1], help="streaming's iterations per tree"
    )
    args = parser.parse_args()
    report = {"wave engine": run_mode(args, False)}
    for in_flight in args.in_flight:
        name = "streaming" if in_flight == 1 else f"streaming x{in_flight}"
        report[name] = run_mode(args, True, in_flight)
    print(
        f"{'mode':<14}{'steps':>7}{'full (work left)':>18}{'full (all)':>12}{'rows/step':>11}"
        f"{'exp/s':>8}"
    )
    for name, row in report.items():
        print(
            f"{name:<14}{row['steps']:>7}{row['full_while_work_remains']:>18.0%}"
            f"{row['full_all_steps']:>12.0%}{row['mean_rows_per_step']:>11.1f}"
            f"{row['expansions_per_s']:>8.2f}"
        )
    base = report["wave engine"]["expansions_per_s"]
    speedup = {name: row["expansions_per_s"] / base for name, row in report.items()}
    for name, ratio in speedup.items():
        if name != "wave engine":
            print(f"{name} / wave engine, expansions/s: {ratio:.2f}x")
    print(json.dumps(report | {"speedup": {"expansions_per_s": speedup}}))


if __name__ == "__main__":
    main()
