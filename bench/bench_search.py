"""Throughput of the search core: engine overhead, and what batching across trees buys.

    python bench/bench_search.py overhead [--iterations 4000] [--profile]
    python bench/bench_search.py batching [--trees 32] [--iterations 5] [--backend fake|tiny|MOD:FN]
    python bench/bench_search.py            # both

(a) **overhead**: a problem that answers instantly from a precomputed table
(proposals with duplicates, invalid samples and stops; transitions; rewards),
so the time measured is the search's own: selection, dedup, node creation,
backpropagation and asyncio scheduling. Reported per expansion and per created
node, for one tree with the expansion's calls issued together (``batch``) and
one after the other, and for 32 trees in the engine. Target: <= 1 ms per node.

(b) **batching**: the same tasks and iteration budget searched (1) one tree at a
time, one request at a time (``concurrent_trees=1, batch=False``, the
reference's way) and (2) 32 trees at once behind a ``BatchingBackend``. Every
propose, world step and evaluation is one model request. The default backend
simulates a GPU: each call costs ``--batch-ms`` plus ``--request-ms`` per
request. ``--backend tiny`` uses ``LocalBackend("tiny")`` (the real tiny
model; give it ``--max-new-tokens``), and ``--backend pkg.module:factory`` any
backend a zero-argument factory returns. Reports expansions/s of both and their ratio.

Prints a table per part, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import json
import pstats
import random
import time
import zlib
from collections.abc import Sequence
from typing import Any

from websynthesis.backends.batching import BatchingBackend
from websynthesis.backends.types import Backend, Generation, GenerationRequest, Sampling
from websynthesis.search import (
    Context,
    EngineSettings,
    Evaluation,
    Proposal,
    SearchEngine,
    SearchResult,
    SearchSettings,
    StepOutcome,
    TreeSearch,
    TreeTask,
)

STOP = -1

# --- (a) engine overhead ------------------------------------------------------------------------


class TableProblem:
    """World and policy read from tables built once: nothing to wait for, nothing to compute.

    States are ints in a random graph of ``n_states`` nodes. Each state has
    ``width`` proposals: mostly moves (some repeated), sometimes a stop or an
    invalid sample. Rewards are fixed per (state, action) and stay below the end
    gate; stops score low, so iterations keep expanding rather than revisiting
    one good terminal (which costs no model call and would flatter the numbers).
    """

    def __init__(self, n_states: int = 4096, width: int = 4, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.proposals: list[list[Proposal[int]]] = []
        self.next_state: dict[tuple[int, int], int] = {}
        self.rewards: dict[tuple[int, int], Evaluation] = {}
        for state in range(n_states):
            row: list[Proposal[int]] = []
            for _ in range(width):
                roll = rng.random()
                if roll < 0.1:
                    row.append(Proposal(None, "garbled", error="unparsable"))
                    continue
                action = STOP if roll < 0.2 else rng.randrange(6)
                if row and roll > 0.85 and row[-1].action is not None:
                    action = row[-1].action  # a duplicate
                row.append(Proposal(action, "thought"))
                self.next_state[state, action] = (
                    state if action == STOP else rng.randrange(n_states)
                )
                high = 0.3 if action == STOP else 0.9
                self.rewards[state, action] = Evaluation(round(rng.uniform(0.0, high), 2), "r")
            self.proposals.append(row)

    async def propose(self, context: Context[int, int], k: int) -> list[Proposal[int]]:
        return self.proposals[context.node.state][:k]

    async def step(self, state: int, action: int) -> StepOutcome[int]:
        return StepOutcome(self.next_state[state, action])

    async def evaluate(self, context: Context[int, int], new_state: int) -> Evaluation:
        parent = context.node.parent
        assert parent is not None and context.node.action is not None
        return self.rewards[parent.state, context.node.action]

    def is_stop(self, action: int) -> bool:
        return action == STOP

    def equivalent(self, a: int, b: int) -> bool:
        return a == b


def overhead(iterations: int, profile: bool) -> dict[str, dict[str, float]]:
    problem = TableProblem()
    config = SearchSettings(branch=2, iterations=iterations, max_depth=20, seed=1)
    rows: dict[str, dict[str, float]] = {}

    def one_tree(batch: bool) -> tuple[float, list[SearchResult[int, int]]]:
        tree = TreeSearch(problem, problem, 0, config, task_id="bench")
        start = time.perf_counter()
        result = asyncio.run(tree.run(batch=batch))
        return time.perf_counter() - start, [result]

    def engine() -> tuple[float, list[SearchResult[int, int]]]:
        per_tree = SearchSettings(branch=2, iterations=max(iterations // 32, 1), max_depth=20)
        work = [TreeTask(f"t{i}", i, None) for i in range(32)]
        search = SearchEngine(problem, problem, per_tree, EngineSettings(concurrent_trees=32))
        start = time.perf_counter()
        results = search.run(work)
        return time.perf_counter() - start, results

    cases = {
        "1 tree, batch": lambda: one_tree(True),
        "1 tree, sequential": lambda: one_tree(False),
        "32 trees (engine)": engine,
    }
    for name, case in cases.items():
        seconds, results = min((case() for _ in range(3)), key=lambda run: run[0])
        expansions = sum(r.stats.expansions for r in results)
        nodes = sum(r.stats.nodes for r in results)
        rows[name] = {
            "seconds": seconds,
            "expansions": expansions,
            "nodes": nodes,
            "ms_per_expansion": 1000 * seconds / max(expansions, 1),
            "ms_per_node": 1000 * seconds / max(nodes, 1),
        }
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_tree, True)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return rows


# --- (b) batching across trees ------------------------------------------------------------------


class SimulatedGPU:
    """A backend whose call costs a fixed latency per batch plus a little per request.

    Answers are a deterministic function of the request (content, seed, sample),
    like a seeded model.
    """

    cache_identity = "simulated-gpu"

    def __init__(self, batch_s: float, request_s: float) -> None:
        self.batch_s, self.request_s = batch_s, request_s
        self.calls = 0

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls += 1
        await asyncio.sleep(self.batch_s + self.request_s * len(requests))
        return [self._answer(r) for r in requests]

    def _answer(self, request: GenerationRequest) -> Generation:
        content = request.messages[-1]["content"]
        texts = [f"{content}|{request.sampling.seed}|{i}" for i in range(request.sampling.n)]
        return Generation(texts=texts, prompt_tokens=len(content) // 4, completion_tokens=8)

    def close(self) -> None:
        pass


class ModelProblem:
    """Every propose, step and evaluation is one request; any answer text is usable.

    The policy asks for ``k`` samples in one request (``n=k``, seeded by the
    context) and turns each text into an action by hashing it, so a real model's
    noise still gives a valid search. The world asks the model but keeps the
    state symbolic (the path of actions); the score is a hash of the answer.
    """

    actions = ("a", "b", "c", "d", "e", "stop")

    def __init__(self, backend: Backend, max_new_tokens: int) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens

    async def _ask(self, content: str, n: int = 1, seed: int | None = None) -> list[str]:
        sampling = Sampling(
            temperature=0.0 if seed is None else 1.0,
            n=n,
            seed=seed,
            max_new_tokens=self.max_new_tokens,
        )
        message = {"role": "user", "content": content}
        (answer,) = await self.backend.agenerate([GenerationRequest((message,), sampling)])
        return answer.texts if answer.ok else []

    async def propose(self, context: Context[str, str], k: int) -> list[Proposal[str]]:
        texts = await self._ask(f"Next action after {context.node.state!r}?", k, context.seed)
        return [Proposal(self.actions[zlib.crc32(t.encode()) % 6], t) for t in texts]

    async def step(self, state: str, action: str) -> StepOutcome[str]:
        await self._ask(f"Page after {action} on {state!r}?")
        return StepOutcome(state if action == "stop" else state + action)

    async def evaluate(self, context: Context[str, str], new_state: str) -> Evaluation:
        texts = await self._ask(f"Score {context.node.action} reaching {new_state!r}.")
        if not texts:
            return Evaluation(None, "no answer", ok=False)
        return Evaluation(zlib.crc32(texts[0].encode()) % 90 / 100)

    def is_stop(self, action: str) -> bool:
        return action == "stop"

    def equivalent(self, a: str, b: str) -> bool:
        return a == b


def make_backend(spec: str, batch_ms: float, request_ms: float) -> Backend:
    if spec == "fake":
        return SimulatedGPU(batch_ms / 1000, request_ms / 1000)
    if spec == "tiny":
        from websynthesis.backends.local import LocalBackend

        return LocalBackend("tiny", max_batch_size=256)
    module, _, factory = spec.partition(":")
    backend: Backend = getattr(importlib.import_module(module), factory)()
    return backend


def batching(args: argparse.Namespace) -> dict[str, Any]:
    inner = make_backend(args.backend, args.batch_ms, args.request_ms)
    work = [TreeTask(f"t{i}", f"task{i}:", None) for i in range(args.trees)]  # no shared prompts
    config = SearchSettings(branch=2, iterations=args.iterations, max_depth=8)

    def measure(backend: Backend, engine: EngineSettings) -> dict[str, float]:
        problem = ModelProblem(backend, args.max_new_tokens)
        start = time.perf_counter()
        results = SearchEngine(problem, problem, config, engine).run(work)
        seconds = time.perf_counter() - start
        expansions = sum(r.stats.expansions for r in results)
        assert all(r.error is None for r in results), [r.error for r in results if r.error]
        return {
            "seconds": seconds,
            "expansions": expansions,
            "nodes": sum(r.stats.nodes for r in results),
            "expansions_per_s": expansions / seconds,
        }

    warm_up = GenerationRequest(({"role": "user", "content": "warm up"},))
    asyncio.run(inner.agenerate([warm_up]))  # lazy loading is nobody's cost
    sequential = measure(inner, EngineSettings(concurrent_trees=1, batch=False))
    batcher = BatchingBackend(inner, max_batch_size=args.max_batch_size)
    concurrent = measure(batcher, EngineSettings(concurrent_trees=args.trees))
    concurrent.update(batcher.stats.to_dict())
    inner.close()
    return {
        "backend": args.backend,
        "one at a time": sequential,
        f"{args.trees} trees batched": concurrent,
        "ratio": concurrent["expansions_per_s"] / sequential["expansions_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=["overhead", "batching", "all"], default="all")
    parser.add_argument("--iterations", type=int, default=None, help="per tree")
    parser.add_argument("--profile", action="store_true", help="cProfile one overhead tree")
    parser.add_argument("--trees", type=int, default=32)
    parser.add_argument("--backend", default="fake", help="fake | tiny | package.module:factory")
    parser.add_argument("--batch-ms", type=float, default=8.0, help="fake backend: per call")
    parser.add_argument("--request-ms", type=float, default=0.1, help="fake backend: per request")
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if args.part in ("overhead", "all"):
        rows = overhead(args.iterations or 4000, args.profile)
        print(f"{'overhead':<22}{'expansions':>12}{'nodes':>8}{'ms/expansion':>14}{'ms/node':>10}")
        for name, row in rows.items():
            print(
                f"{name:<22}{row['expansions']:>12.0f}{row['nodes']:>8.0f}"
                f"{row['ms_per_expansion']:>14.3f}{row['ms_per_node']:>10.3f}"
            )
        report["overhead"] = rows
    if args.part in ("batching", "all"):
        args.iterations = args.iterations or 5
        result = batching(args)
        print(
            f"{'batching (' + args.backend + ')':<22}{'expansions':>12}{'seconds':>9}{'exp/s':>9}"
        )
        for name in ("one at a time", f"{args.trees} trees batched"):
            row = result[name]
            print(
                f"{name:<22}{row['expansions']:>12.0f}{row['seconds']:>9.2f}"
                f"{row['expansions_per_s']:>9.1f}"
            )
        print(f"ratio (batched / one at a time): {result['ratio']:.1f}x")
        report["batching"] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
