"""The response cache: exact replay without calls, per-sample reuse, rules, several writers."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from websynthesis.backends.cache import CachedBackend
from websynthesis.backends.types import (
    Generation,
    GenerationRequest,
    Sampling,
    derive_seed,
    generate,
)


class SeededBackend:
    """Deterministic in its seed like a real sampler: sample i of a call depends on (seed, i).

    Without a seed at temperature > 0 every call differs (a counter), like real sampling.
    """

    cache_identity = "seeded-fake"

    def __init__(self) -> None:
        self.calls: list[list[GenerationRequest]] = []
        self._fresh = 0

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(list(requests))
        return [self._answer(r) for r in requests]

    def _answer(self, request: GenerationRequest) -> Generation:
        content = request.messages[-1]["content"]
        if content == "fail":
            return Generation(texts=[], error="server_error: boom")
        s = request.sampling
        if s.temperature > 0 and s.seed is None:
            self._fresh += 1
            salt = f"fresh{self._fresh}"
        else:
            salt = f"seed{s.seed}"
        texts = [f"{request.model}|{content}|{salt}|{i}" for i in range(s.n)]
        return Generation(
            texts=texts, prompt_tokens=3, completion_tokens=2 * s.n, finish_reasons=["stop"] * s.n
        )

    def close(self) -> None:
        pass


def _req(content: str, **sampling) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": content},), sampling=Sampling(**sampling)
    )


def test_replay_is_identical_with_zero_backend_calls(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    batch = [
        _req("greedy"),
        _req("seeded", temperature=1.0, seed=7, n=3),
        replace(_req("lora", temperature=0.7, seed=1), model="policy", grammar="root ::= [a-z]+"),
    ]
    first_inner = SeededBackend()
    first = CachedBackend(first_inner, db)
    original = generate(first, batch)
    assert (first.stats.hits, first.stats.misses) == (0, 3)
    assert len(first_inner.calls) == 1
    first.close()

    inner = SeededBackend()
    again = CachedBackend(inner, db)
    replayed = generate(again, batch)
    assert inner.calls == []
    assert (again.stats.hits, again.stats.misses) == (3, 0)
    assert [g.texts for g in replayed] == [g.texts for g in original]
    assert [g.finish_reasons for g in replayed] == [g.finish_reasons for g in original]
    assert all(g.cached and g.prompt_tokens == 0 and g.completion_tokens == 0 for g in replayed)


def test_more_samples_reuse_the_cached_ones(tmp_path: Path) -> None:
    inner = SeededBackend()
    cache = CachedBackend(inner, tmp_path / "c.sqlite")
    two = generate(cache, [_req("q", temperature=1.0, seed=5, n=2)])[0]
    four = generate(cache, [_req("q", temperature=1.0, seed=5, n=4)])[0]
    assert four.texts[:2] == two.texts
    assert len(set(four.texts)) == 4, "the new samples must not repeat the cached ones"
    asked = inner.calls[-1][0].sampling
    assert (asked.n, asked.seed) == (2, derive_seed(5, 2))
    assert not four.cached and four.completion_tokens == 4  # only the new samples' tokens
    assert (cache.stats.hits, cache.stats.misses) == (0, 2)
    calls = len(inner.calls)
    assert generate(cache, [_req("q", temperature=1.0, seed=5, n=3)])[0].texts == four.texts[:3]
    assert len(inner.calls) == calls and cache.stats.hits == 1


def test_unseeded_sampling_is_never_cached(tmp_path: Path) -> None:
    inner = SeededBackend()
    cache = CachedBackend(inner, tmp_path / "c.sqlite")
    a = generate(cache, [_req("s", temperature=0.8)])[0]
    b = generate(cache, [_req("s", temperature=0.8)])[0]
    assert a.texts != b.texts and not b.cached
    assert len(inner.calls) == 2
    assert (cache.stats.uncacheable, cache.stats.hits, cache.stats.misses) == (2, 0, 0)
    assert not (tmp_path / "c.sqlite").exists()  # nothing was ever stored


def test_failures_are_not_cached(tmp_path: Path) -> None:
    inner = SeededBackend()
    cache = CachedBackend(inner, tmp_path / "c.sqlite")
    assert generate(cache, [_req("fail")])[0].error
    assert generate(cache, [_req("fail")])[0].error
    assert len(inner.calls) == 2 and cache.stats.hits == 0


def test_key_covers_what_changes_the_answer_and_nothing_else(tmp_path: Path) -> None:
    inner = SeededBackend()
    cache = CachedBackend(inner, tmp_path / "c.sqlite")
    base = _req("k", temperature=0.5, seed=1)
    generate(cache, [base])
    same = [
        replace(base, role="judge"),
        replace(base, sampling=replace(base.sampling, temperature=0.5)),
        replace(base, messages=({"content": "k", "role": "user"},)),
    ]
    different = [
        replace(base, model="policy"),
        replace(base, grammar="root ::= 'a'"),
        replace(base, sampling=replace(base.sampling, seed=2)),
        replace(base, sampling=replace(base.sampling, top_p=0.9)),
        replace(base, sampling=replace(base.sampling, max_new_tokens=8)),
        replace(base, messages=({"role": "system", "content": "k"},)),
    ]
    for request in same:
        assert generate(cache, [request])[0].cached, request
    for request in different:
        assert not generate(cache, [request])[0].cached, request
    greedy_int = _req("g", temperature=0)
    generate(cache, [greedy_int])
    assert generate(cache, [_req("g", temperature=0.0)])[0].cached

    other_identity = CachedBackend(SeededBackend(), tmp_path / "c.sqlite", identity={"kind": "x"})
    assert not generate(other_identity, [base])[0].cached


def test_disabled_cache_passes_through(tmp_path: Path) -> None:
    inner = SeededBackend()
    cache = CachedBackend(inner, tmp_path / "off.sqlite", enabled=False)
    generate(cache, [_req("a")])
    generate(cache, [_req("a")])
    assert len(inner.calls) == 2 and not (tmp_path / "off.sqlite").exists()


def test_backend_without_identity_is_refused(tmp_path: Path) -> None:
    class Anonymous(SeededBackend):
        cache_identity = None

    with pytest.raises(TypeError, match="identity"):
        CachedBackend(Anonymous(), tmp_path / "c.sqlite")
    CachedBackend(Anonymous(), tmp_path / "c.sqlite", identity="local:/models/x")


def _writer(db: str, worker: int, rounds: int, start: threading.Barrier) -> None:
    cache = CachedBackend(SeededBackend(), db)
    start.wait(timeout=30)  # both write at the same time
    for r in range(rounds):
        batch = [_req(f"shared-{r}-{i}") for i in range(10)]
        batch += [_req(f"own-{worker}-{r}-{i}", temperature=1.0, seed=i, n=2) for i in range(10)]
        assert all(g.ok for g in generate(cache, batch))
    cache.close()


def test_two_processes_write_one_cache(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.sqlite")
    rounds = 60
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(db, w, rounds, start)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == rounds * (10 + 2 * 20)
    conn.close()
    inner = SeededBackend()
    cache = CachedBackend(inner, db)
    batch = [_req(f"shared-{r}-{i}") for r in range(rounds) for i in range(10)]
    batch += [
        _req(f"own-{w}-{r}-{i}", temperature=1.0, seed=i, n=2)
        for w in range(2)
        for r in range(rounds)
        for i in range(10)
    ]
    replayed = generate(cache, batch)
    assert inner.calls == [] and all(g.cached for g in replayed)
    assert replayed == _expected_replay(batch)


def _expected_replay(batch: list[GenerationRequest]) -> list[Generation]:
    """What the fake says, marked as cached with no tokens: the exact replay expected."""
    fresh = generate(SeededBackend(), batch)
    return [replace(g, cached=True, prompt_tokens=0, completion_tokens=0) for g in fresh]


@given(seed=st.integers(-(2**40), 2**40), a=st.integers(0, 10**4), b=st.integers(0, 10**4))
def test_derived_seeds_compose_and_stay_in_int32(seed: int, a: int, b: int) -> None:
    assert derive_seed(seed, 0) == seed and derive_seed(None, a) is None
    assert derive_seed(derive_seed(seed, a), b) == derive_seed(seed, a + b)
    if a:
        assert 0 <= derive_seed(seed, a) < 2**31


def test_derived_seeds_do_not_collide_with_neighbouring_seeds() -> None:
    derived = {derive_seed(s, k) for s in range(1000) for k in range(1, 64)}
    assert len(derived) == 1000 * 63 and not derived & set(range(1000))


def test_a_servers_answers_are_keyed_on_the_server_and_what_it_serves() -> None:
    """Another server, dialect or revision of the same served name is another identity:
    an adapter retrained and re-served as "policy" is not answered from the old cache."""
    from websynthesis.backends.openai_backend import OpenAIBackend

    def identity(**changes: object) -> object:
        settings = {"model": "policy", "base_url": "http://127.0.0.1:8000/v1"} | changes
        return OpenAIBackend(api_key_env=None, **settings).cache_identity  # type: ignore[arg-type]

    base = identity()
    assert identity() == base  # the same server and model: answers are shared
    others = [
        identity(base_url="http://127.0.0.1:8001/v1"),
        identity(grammar_mode="vllm"),
        identity(revision="adapter-step-480"),
        identity(extra_body={"top_k": 20}),
    ]
    assert all(other != base for other in others)
    assert len({json.dumps(o, sort_keys=True) for o in others}) == len(others)
