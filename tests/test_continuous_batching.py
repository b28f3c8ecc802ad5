"""Continuous batching in LocalBackend: requests join a running decode, answers unchanged.

The continuous backend is compared with the chunk decode (``continuous=False``), both in
float64 (see test_local_backend.py: a near tie in float32 could flip a greedy token when
rows share a step with other rows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import DictConfig
from test_local_backend import PROMPTS, ask  # tests/ is on sys.path

from websynthesis.backends import cascade
from websynthesis.backends.local import LocalBackend, LocalStats
from websynthesis.backends.prefill import PrefixCache, shared_length
from websynthesis.backends.stack import build_stack
from websynthesis.backends.types import Generation, GenerationRequest, generate
from websynthesis.data.tasks import load_tasks
from websynthesis.roles.client import ModelClient
from websynthesis.roles.grammar import action_grammar
from websynthesis.search import EngineSettings, SearchEngine, SearchSettings, TreeTask
from websynthesis.synthesis import Goal, ModelWorld, WebSearchPolicy, WebState
from websynthesis.web.observation import parse_axtree


def mixture() -> list[GenerationRequest]:
    """Requests of every kind a chunk decodes: greedy and seeded, n > 1, a grammar, logprobs,
    adapters (base, two LoRAs), budgets from 3 to 40 tokens."""
    grammar = action_grammar(["12", "7", "164"], max_text_chars=8)
    return [
        ask(PROMPTS[2], max_new_tokens=40),
        ask(PROMPTS[0], model="policy", max_new_tokens=3),
        ask(PROMPTS[1], model="world_model", temperature=0.8, seed=7, n=3, max_new_tokens=24),
        ask(PROMPTS[3], "policy", grammar, temperature=1.0, seed=3, max_new_tokens=30),
        ask(PROMPTS[1], logprobs=2, max_new_tokens=12),
        ask(PROMPTS[0], temperature=0.7, top_p=0.9, seed=11, max_new_tokens=16),
        ask(PROMPTS[2], model="policy", max_new_tokens=5),
    ]


def answers(results: list[Generation]) -> list[tuple[object, ...]]:
    assert all(r.ok for r in results), [r.error for r in results]
    return [
        (r.texts, r.finish_reasons, r.prompt_tokens, r.completion_tokens, r.logprobs)
        for r in results
    ]


@pytest.fixture(scope="module")
def backends(tiny_model_path: Path, adapters: dict[str, str]) -> tuple[LocalBackend, LocalBackend]:
    """The chunk decode and the continuous one, the same model and adapters, float64."""
    wave = LocalBackend(str(tiny_model_path), adapters=adapters, dtype="float64")
    continuous = LocalBackend(
        str(tiny_model_path), adapters=adapters, dtype="float64", continuous=True
    )
    yield wave, continuous
    continuous.close()


async def staggered(backend: LocalBackend, requests: list[GenerationRequest]) -> list[Generation]:
    """Each request its own call, the next one sent while the earlier ones decode."""

    async def one(k: int, request: GenerationRequest) -> Generation:
        await asyncio.sleep(0.02 * k)
        (result,) = await backend.agenerate([request])
        return result

    return list(await asyncio.gather(*(one(k, r) for k, r in enumerate(requests))))


def test_joining_a_running_decode_leaves_every_answer_as_the_chunk_decode_gives_it(
    backends: tuple[LocalBackend, LocalBackend],
) -> None:
    wave, continuous = backends
    requests = mixture()
    expected = answers(generate(wave, requests))  # one call: the chunks of one batch
    alone = [answers(generate(wave, [r]))[0] for r in requests]  # each request by itself
    assert expected == alone
    before = continuous.stats.to_dict()
    got = answers(asyncio.run(staggered(continuous, requests)))
    assert got == expected
    after = continuous.stats.to_dict()
    assert after["joined"] - before["joined"] >= 3  # requests did join a running decode
    steps = after["decode_steps"] - before["decode_steps"]
    rows = after["step_rows"] - before["step_rows"]
    assert rows / steps > 1.5  # steps carried rows of several requests
    decoder = continuous._continuous
    assert decoder is not None and decoder.prefixes.hits > 0  # chunk prefixes were reused
    # All at once in one call: the same answers again.
    assert answers(generate(continuous, requests)) == expected


def test_a_short_request_is_answered_while_a_long_one_decodes(
    backends: tuple[LocalBackend, LocalBackend],
) -> None:
    _, continuous = backends
    finished: list[str] = []

    async def main() -> None:
        async def call(name: str, request: GenerationRequest, delay: float) -> None:
            await asyncio.sleep(delay)
            (result,) = await continuous.agenerate([request])
            assert result.ok, result.error
            finished.append(name)

        long = ask(PROMPTS[2], max_new_tokens=120, temperature=1.0, seed=5)
        short = ask(PROMPTS[0], max_new_tokens=2)
        await asyncio.gather(call("long", long, 0.0), call("short", short, 0.05))

    asyncio.run(main())
    assert finished == ["short", "long"]


def test_rejected_requests_fail_alone_and_a_failing_step_is_rerun(
    backends: tuple[LocalBackend, LocalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    wave, continuous = backends
    requests = [ask(PROMPTS[0], model="unknown"), ask(PROMPTS[1]), ask(PROMPTS[2], n=2)]
    expected = generate(wave, requests[1:])
    calls = {"n": 0}
    real = cascade.forward

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(*args, **kwargs)

    monkeypatch.setattr("websynthesis.backends.continuous.forward", flaky)
    results = generate(continuous, requests)
    assert (results[0].error or "").startswith("not_found:")
    assert answers(results[1:]) == answers(expected)
    assert calls["n"] >= 3


def test_a_closed_backend_answers_what_waits_and_takes_no_more(tiny_model_path: Path) -> None:
    backend = LocalBackend(str(tiny_model_path), continuous=True)
    assert generate(backend, [ask(PROMPTS[0])])[0].ok

    async def main() -> Generation:
        task = asyncio.ensure_future(backend.agenerate([ask(PROMPTS[2], max_new_tokens=400)]))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(backend.close)
        return (await task)[0]

    started = time.monotonic()
    result = asyncio.run(main())
    assert result.ok or result.error == "internal: the backend was closed"
    assert time.monotonic() - started < 60
    with pytest.raises(RuntimeError, match="closed"):
        generate(backend, [ask(PROMPTS[0])])


def searched_trees(model_cfg: DictConfig, trees: int) -> tuple[list[dict[str, Any]], LocalStats]:
    """``trees`` demo tasks searched at once by the real pieces (client, world model, policy,
    engine) behind the job's stack; each tree's nodes (action, state, reward) and the backend's
    statistics."""
    stack = build_stack(model_cfg)
    client = ModelClient.from_config(model_cfg, backend=stack.backend)
    policy = WebSearchPolicy(client)
    scale = policy.scale
    settings = SearchSettings(
        iterations=3, max_depth=3, low=scale.low, high=scale.high, end_gate=scale.high
    )
    engine: SearchEngine[WebState, Any] = SearchEngine(
        ModelWorld(client), policy, settings, EngineSettings(concurrent_trees=trees)
    )
    demo = load_tasks("demo")
    work = []
    for i in range(trees):
        task = demo[i % len(demo)]
        state = WebState(task.task_id, parse_axtree(task.state or ""))
        work.append(TreeTask(f"{task.task_id}#{i}", state, Goal.from_task(task)))
    results = engine.run(work)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert stack.batcher is not None and isinstance(stack.batcher.inner, LocalBackend)
    stats = stack.batcher.inner.stats
    stack.backend.close()
    shapes = [r.to_dict(lambda state: state.observation.render(), str)["nodes"] for r in results]
    return shapes, stats


@pytest.mark.slow
def test_synthesis_batched_continuously_builds_the_trees_of_the_chunk_decode(
    tiny_model_config: Callable[..., DictConfig],
) -> None:
    """The deterministic mode (the chunk decode: a wave waits for the one before) and the
    continuous one (a tree's next requests join the decode as soon as its own are answered)
    grow the same trees: answers depend on the request and its seed, not on the step a row
    shares (float64, so no near tie decides it)."""
    base = ("model.backend.dtype=float64", "model.batching.max_batch_size=16")
    waves, wave_stats = searched_trees(tiny_model_config(*base), 6)
    streamed, stats = searched_trees(tiny_model_config(*base, "model.backend.continuous=true"), 6)
    assert streamed == waves
    assert sum(len(tree) for tree in waves) > 6 * 3  # the trees grew
    assert stats.joined > 0 and wave_stats.joined == 0


@given(
    st.lists(st.integers(0, 3), max_size=40),
    st.lists(st.integers(0, 3), max_size=40),
)
def test_shared_length_is_the_common_opening(first: list[int], second: list[int]) -> None:
    naive = next(
        (k for k, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )
    assert shared_length(first, second) == naive


def test_the_prefix_cache_hands_back_the_longest_shared_run_and_forgets_the_oldest() -> None:
    import torch

    def kv(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        keys = torch.tensor(tokens, dtype=torch.float64).view(1, 1, -1, 1)
        return [(keys, -keys)]

    cache = PrefixCache(entries=2)
    cache.store(("a",), [1, 2, 3, 4], kv([1, 2, 3, 4]))
    cache.store(("a",), [1, 2, 9], kv([1, 2, 9]))
    cache.store(("b",), [1, 2, 3, 4, 5], kv([1, 2, 3, 4, 5]))  # the first entry leaves
    length, found = cache.lookup(("a",), [1, 2, 3, 7])
    assert length == 2 and found is not None
    assert found[0][0].flatten().tolist() == [1.0, 2.0]
    assert found[0][1].flatten().tolist() == [-1.0, -2.0]
    assert cache.lookup(("b",), [1, 2, 3, 4, 5, 6])[0] == 5
    assert cache.lookup(("c",), [1, 2]) == (0, None)
