"""The engine: many trees at once, contained failures, and model calls batched across trees."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from test_search_mcts import STOP, Toy, comparable

from websynthesis.backends.batching import BatchingBackend
from websynthesis.backends.types import Backend, Generation, GenerationRequest
from websynthesis.search import (
    Context,
    EngineSettings,
    Evaluation,
    Progress,
    Proposal,
    SearchEngine,
    SearchResult,
    SearchSettings,
    StepOutcome,
    StopReason,
    TreeSearch,
    TreeTask,
)


def tasks(n: int, payload: object = None) -> list[TreeTask[str]]:
    return [TreeTask(f"task-{i}", "", payload) for i in range(n)]


def test_many_trees_finish_each_reported_once_in_task_order() -> None:
    done: list[str] = []
    progress: list[Progress] = []
    engine = SearchEngine(
        Toy("abc"), Toy("abc"), SearchSettings(branch=3, iterations=10),
        EngineSettings(concurrent_trees=6),
        on_tree_done=lambda task_id, result: done.append(task_id),
        on_progress=progress.append,
    )  # fmt: skip
    results = engine.run(tasks(20))
    assert [r.task_id for r in results] == [f"task-{i}" for i in range(20)]
    assert sorted(done) == sorted(r.task_id for r in results)
    assert all(r.stop_reason is StopReason.ITERATIONS and r.iterations == 10 for r in results)
    last = progress[-1]
    assert (last.trees_done, last.trees_total, last.trees_failed) == (20, 20, 0)
    assert last.nodes == sum(r.stats.nodes for r in results) and last.nodes_per_s > 0


def test_engine_trees_equal_trees_searched_alone() -> None:
    """Same seed, deterministic problem, one iteration in flight: interleaving changes nothing."""
    config = SearchSettings(branch=3, iterations=15, exploration=2.0, seed=11)
    toy = Toy("abc", wrong_stop=0.2, yield_every_call=True)
    together = SearchEngine(toy, toy, config, EngineSettings(concurrent_trees=8)).run(tasks(8))
    for result in together:
        alone_toy = Toy("abc", wrong_stop=0.2)
        alone = TreeSearch(alone_toy, alone_toy, "", config, task_id=result.task_id)
        assert comparable(asyncio.run(alone.run())) == comparable(result)
    assert len({str(comparable(r)["nodes"]) for r in together}) > 1  # the seeds differ per task


class Exploding(Toy):
    async def propose(self, context: Context[str, str], k: int) -> list[Proposal[str]]:
        if context.payload == "boom" and context.node.depth == 2:
            raise RuntimeError("policy bug")
        return await super().propose(context, k)


def test_one_tree_s_exception_is_recorded_and_the_others_finish() -> None:
    toy = Exploding("abcd", yield_every_call=True)
    work = tasks(5)
    work[2] = TreeTask("bad", "", "boom")
    done: dict[str, SearchResult] = {}

    async def save(task_id: str, result: SearchResult) -> None:
        await asyncio.sleep(0)
        done[task_id] = result

    results = SearchEngine(
        toy,
        toy,
        SearchSettings(iterations=12),
        EngineSettings(concurrent_trees=5),
        on_tree_done=save,
    ).run(work)
    bad = results[2]
    assert bad.stop_reason is StopReason.ERROR and bad.error is not None
    assert "Traceback" in bad.error and "RuntimeError: policy bug" in bad.error
    assert bad.root.children and bad.to_dict()["error"] == bad.error  # the partial tree is kept
    assert all(r.error is None and r.iterations == 12 for i, r in enumerate(results) if i != 2)
    assert done["bad"] is bad and len(done) == 5


def test_a_global_budget_stops_every_tree_cleanly() -> None:
    toy = Toy("abcdef")
    engine = SearchEngine(
        toy, toy, SearchSettings(iterations=50), EngineSettings(concurrent_trees=4),
        budget_exhausted=lambda: toy.steps >= 40,
    )  # fmt: skip
    results = engine.run(tasks(4))
    assert {r.stop_reason for r in results} == {StopReason.BUDGET}
    assert all(r.iterations < 50 and r.error is None for r in results)


def test_in_flight_iterations_per_tree_keep_the_invariants() -> None:
    toy = Toy("abcd", yield_every_call=True)
    engine = SearchEngine(
        toy, toy, SearchSettings(branch=3, iterations=20),
        EngineSettings(concurrent_trees=3, in_flight_per_tree=4),
    )  # fmt: skip
    for result in engine.run(tasks(3)):
        assert result.iterations == result.root.visits == 20
        for node in result.root.walk():
            assert node.virtual_loss == 0
            assert node.visits >= sum(child.visits for child in node.children)


# --- with a model backend ---------------------------------------------------------------------


class RuleModel:
    """A "model" that knows the toy's rules; counts calls and the most calls at once."""

    cache_identity = "rules"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(len(requests))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        return [Generation(texts=[self._answer(r.messages[-1]["content"])]) for r in requests]

    def _answer(self, question: str) -> str:
        kind, target, state, action = question.split("|")
        toy = Toy(target)
        if kind == "propose":
            return ",".join(toy.raw_proposals(state))
        if kind == "step":
            return state if action == STOP else state + action.lower()
        return str(toy.reward(state, action))

    def close(self) -> None:
        pass


class ModelToy:
    """The toy asked of a backend: one greedy request per propose, step and evaluate.

    The target travels in the task payload; the world does not know it, so step
    requests carry a placeholder.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def _ask(self, *parts: str) -> str:
        message = {"role": "user", "content": "|".join(parts)}
        (answer,) = await self.backend.agenerate([GenerationRequest(messages=(message,))])
        return answer.texts[0]

    async def propose(self, context: Context[str, str], k: int) -> list[Proposal[str]]:
        text = await self._ask("propose", context.payload, context.node.state, "")
        return [Proposal(a) if a.isalpha() else Proposal(None, error=a) for a in text.split(",")][
            :k
        ]

    async def step(self, state: str, action: str) -> StepOutcome[str]:
        return StepOutcome(await self._ask("step", "-", state, action))

    async def evaluate(self, context: Context[str, str], new_state: str) -> Evaluation:
        node = context.node
        assert node.parent is not None and node.action is not None
        text = await self._ask("score", context.payload, node.parent.state, node.action)
        return Evaluation(float(text))

    def is_stop(self, action: str) -> bool:
        return action == STOP

    def equivalent(self, a: str, b: str) -> bool:
        return a.lower() == b.lower()


def test_batching_backend_turns_16_trees_calls_into_few_batches() -> None:
    model = RuleModel()
    backend = BatchingBackend(model, max_batch_size=256)
    problem = ModelToy(backend)
    work = [TreeTask(f"t{i}", "", ["abc", "bca", "cab", "acb"][i % 4]) for i in range(16)]
    engine = SearchEngine(
        problem,
        problem,
        SearchSettings(branch=2, iterations=8),
        EngineSettings(concurrent_trees=16),
    )
    results = engine.run(work)
    stats = backend.stats
    assert all(r.error is None and r.iterations == 8 for r in results)
    assert stats.requests == sum(r.stats.world_steps + r.stats.evaluations + r.stats.expansions
                                 for r in results)  # fmt: skip
    assert len(model.calls) <= stats.requests / 4
    # Four trees share each target and start from the same page: their identical greedy
    # requests (root proposals, first steps and scores) are generated once per batch.
    assert stats.dedup_hits >= 12 * 3
    assert stats.sent == stats.requests - stats.dedup_hits


def test_batched_results_equal_unbatched_results() -> None:
    work = [TreeTask(f"t{i}", "", "abc") for i in range(4)]
    config = SearchSettings(branch=2, iterations=6)
    plain = ModelToy(RuleModel())
    batched = ModelToy(BatchingBackend(RuleModel()))
    one_by_one = SearchEngine(plain, plain, config, EngineSettings(concurrent_trees=1, batch=False))
    together = SearchEngine(batched, batched, config, EngineSettings(concurrent_trees=4))
    assert [comparable(r) for r in one_by_one.run(work)] == [
        comparable(r) for r in together.run(work)
    ]


def test_unbatched_single_tree_mode_asks_one_request_at_a_time() -> None:
    model = RuleModel()
    problem = ModelToy(model)
    engine = SearchEngine(
        problem, problem, SearchSettings(branch=3, iterations=5),
        EngineSettings(concurrent_trees=1, batch=False),
    )  # fmt: skip
    engine.run(tasks(3, payload="abc"))
    assert model.most_in_flight == 1 and set(model.calls) == {1}
