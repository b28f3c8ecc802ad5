"""Occupancy of a continuous-batching server under synthesis: the wave engine against streaming.

    python bench/bench_occupancy.py [--trees 64] [--capacity 32] [--iterations 6]
        [--in-flight 1 2] [--distinct-pages]

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
the real one (client, world model, policy, engine over the OpenAI backend); their lengths in
tokens are drawn per request from a seeded hash (policy 24-64, world model 120-400, reward
6-12), the spread that makes waves wait. Each tree's task is its own (its intent carries a
mark), so no two trees send the same policy or reward request; the world model's question is
the page and the actions only, so by default trees that start on one page ask it the same
questions, and the batcher answers each once (as it would for WebArena tasks that share a
start page). ``--distinct-pages`` puts each tree's mark on its pages too: no request is
shared, and the batch is fed by as many trees as are searching.

Reported per mode: the share of the server's steps at full batch while work remains (a step
is full when no waiting request would fit; work remains while at least ``capacity / 2``
trees are still searching, each keeping two rows or more in flight), the mean rows per step,
and node expansions per second; the two modes side by side in one run. Then the same steps
split by how many trees were still searching (:func:`split_by_trees_left`), with how many of
them had a request in the engine. ``--in-flight`` runs
streaming once per value of ``search.in_flight_per_tree`` (iterations of one tree in flight at
once, under virtual loss: more rows offered per tree, at the cost of trees that depend on
timing); the wave engine keeps one, its reproducible setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
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
from websynthesis.web.observation import parse_axtree

LENGTHS = {"policy": (24, 64), "world_model": (120, 400), "reward": (6, 12)}
COPY_MARK = re.compile(r"\bcopy (\d+)\b")  # a tree's mark: in its intent, and in its page


@dataclass(frozen=True)
class Step:
    """One step of the simulated engine, as the split by trees left reads it."""

    rows: int
    full: bool
    trees_left: int  # trees still searching
    trees_present: int  # trees with a request running or waiting in the engine


@dataclass
class _Request:
    generation: Generation
    left: list[int]  # tokens each row still has to take
    future: asyncio.Future[Generation]
    tree: str  # the tree that asked: its task's "copy i" mark (see ``tasks(distinct=True)``)


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
    steps: list[Step] = field(default_factory=list)
    distinct_pages: bool = False  # the world model keeps each tree's mark on its pages
    unmarked: int = 0  # requests that named no tree (the split cannot place them)
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
            mark = COPY_MARK.search(key)  # the messages, serialised once
            tree = mark.group(1) if mark else "?"
            self.unmarked += mark is None
            if self.distinct_pages and request.role == "world_model":
                answer = replace(answer, texts=[marked(t, tree) for t in answer.texts])
            self._waiting.append(_Request(answer, lengths, loop.create_future(), tree))
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
            present = {r.tree for r in self._running} | {r.tree for r in self._waiting}
            self.steps.append(Step(rows, full, self.trees_left[0], len(present)))
            await asyncio.sleep(self.step_s + self.row_s * rows)
            for request in self._running:
                request.left = [t - 1 for t in request.left if t > 1]
                if not request.left:
                    request.future.set_result(request.generation)
            self._running = [r for r in self._running if r.left]

    def close(self) -> None:
        pass


def marked(page: str, tree: str) -> str:
    """``page`` (an ``<a11y>`` answer or an accessibility tree) with tree ``tree``'s mark."""
    line = f"\t[90] StaticText 'copy {tree}'\n"
    if "</a11y>" in page:
        return page.replace("</a11y>", line + "</a11y>")
    return page.rstrip("\n") + "\n" + line


def split_by_trees_left(
    steps: Sequence[Step], capacity: int, presence_known: bool = True
) -> dict[str, dict[str, float | None]]:
    """The steps in bands of trees still searching (``capacity`` 32: >=64, 32-63, 16-31, <16).

    Why: the headline share mixes the phase where every tree searches with the one where
    trees finish; the band where the batch runs short says which lever is left. A step is
    short of full with ``trees_present`` below ``trees_left`` when some searching trees had
    nothing in the engine (their next request was in the client, in HTTP or in the server's
    window); with every tree present, they offered fewer rows than the batch holds.
    ``presence_known=False`` (some requests named no tree: the world model's, where trees
    share pages) leaves the two presence figures out as ``None``: they would count only the
    trees waiting on a policy or reward answer.
    """
    bands = {
        f">={2 * capacity}": (2 * capacity, None),
        f"{capacity}-{2 * capacity - 1}": (capacity, 2 * capacity),
        f"{capacity // 2}-{capacity - 1}": (capacity // 2, capacity),
        f"<{capacity // 2}": (0, capacity // 2),
    }
    report = {}
    for name, (low, high) in bands.items():
        band = [s for s in steps if s.trees_left >= low and (high is None or s.trees_left < high)]
        if not band:
            continue
        short = [s for s in band if not s.full]
        absent = statistics.mean(s.trees_left - s.trees_present for s in short) if short else 0.0
        report[name] = {
            "steps": len(band),
            "full": sum(s.full for s in band) / len(band),
            "rows_per_step": statistics.mean(s.rows for s in band),
            "trees_left": statistics.mean(s.trees_left for s in band),
            "trees_present": (
                statistics.mean(s.trees_present for s in band) if presence_known else None
            ),
            "short_steps_trees_absent": absent if presence_known else None,
        }
    return report


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_mode(args: argparse.Namespace, streaming: bool, in_flight: int = 1) -> dict[str, Any]:
    """One synthesis search over HTTP against a fresh simulated engine."""
    demo = load_tasks("demo")
    task = demo[0]
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
        table,
        args.capacity,
        args.step_ms / 1000,
        args.row_ms / 1000,
        trees_left,
        roles=roles,
        distinct_pages=args.distinct_pages,
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
        work = tasks(args.trees, distinct=True)
        if args.distinct_pages:  # each tree's own first page (as tasks() picks it), marked
            pages = [t.state or "" for t in demo]
            work = [
                replace(
                    t, root=WebState(t.task_id, parse_axtree(marked(pages[i % len(pages)], str(i))))
                )
                for i, t in enumerate(work)
            ]
        results = search.run(work)
        seconds = time.perf_counter() - start
        remote.close()
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    steps = engine_sim.steps
    working = [s for s in steps if s.trees_left * 2 >= args.capacity]
    expansions = sum(r.stats.expansions for r in results)
    assert stack.batcher is not None
    return {
        "dedup_hits": stack.batcher.stats.dedup_hits,
        "unmarked_requests": engine_sim.unmarked,
        "steps": len(steps),
        "steps_while_work_remains": len(working),
        "full_while_work_remains": sum(s.full for s in working) / max(1, len(working)),
        "full_all_steps": sum(s.full for s in steps) / len(steps),
        "mean_rows_per_step": statistics.mean(s.rows for s in steps),
        "by_trees_left": split_by_trees_left(
            steps, args.capacity, presence_known=engine_sim.unmarked == 0
        ),
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
    parser.add_argument(
        "--distinct-pages",
        action="store_true",
        help="each tree's pages carry its mark, so no world-model request is shared by trees",
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
    print(
        f"\n{'mode':<14}{'trees left':>11}{'steps':>7}{'full':>6}{'rows/step':>11}"
        f"{'trees left/present':>20}{'absent when short':>19}"
    )
    for name, row in report.items():
        for band, cell in row["by_trees_left"].items():
            print(
                f"{name:<14}{band:>11}{cell['steps']:>7}{cell['full']:>6.0%}"
                f"{cell['rows_per_step']:>11.1f}"
                f"{cell['trees_left']:>11.1f} /{_figure(cell['trees_present']):>6}"
                f"{_figure(cell['short_steps_trees_absent']):>19}"
            )
    base = report["wave engine"]["expansions_per_s"]
    speedup = {name: row["expansions_per_s"] / base for name, row in report.items()}
    for name, ratio in speedup.items():
        if name != "wave engine":
            print(f"{name} / wave engine, expansions/s: {ratio:.2f}x")
    print(json.dumps(report | {"speedup": {"expansions_per_s": speedup}}))


if __name__ == "__main__":
    main()
