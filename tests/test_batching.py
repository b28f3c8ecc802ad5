"""BatchingBackend: waves become batches, identical repeatable requests are generated once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from websynthesis.backends.batching import BatchingBackend
from websynthesis.backends.types import Generation, GenerationRequest, Sampling


class Recorder:
    """Answers ``echo:<content>#<call>``; can fail a call; records each batch."""

    cache_identity = "recorder"

    def __init__(
        self, fail_on: str | None = None, wrong_length: bool = False, delay: float = 0.0
    ) -> None:
        self.batches: list[list[GenerationRequest]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.wrong_length = wrong_length
        self.closed = False

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.batches.append(list(requests))
        await asyncio.sleep(self.delay)
        contents = [r.messages[-1]["content"] for r in requests]
        if self.fail_on in contents:
            raise RuntimeError("CUDA out of memory")
        answers = [
            Generation(
                texts=[f"echo:{c}#{len(self.batches)}"] * r.sampling.n,
                prompt_tokens=5,
                completion_tokens=3,
                finish_reasons=["stop"] * r.sampling.n,
            )
            for c, r in zip(contents, requests, strict=True)
        ]
        return answers[:-1] if self.wrong_length else answers

    def close(self) -> None:
        self.closed = True


def req(content: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": content},), sampling=Sampling(**sampling)
    )


async def one(backend: BatchingBackend, content: str, **sampling: object) -> Generation:
    return (await backend.agenerate([req(content, **sampling)]))[0]


def test_one_wave_is_one_call_in_order() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)

    async def main() -> list[Generation]:
        return list(await asyncio.gather(*(one(backend, f"q{i}") for i in range(20))))

    answers = asyncio.run(main())
    assert [a.texts for a in answers] == [[f"echo:q{i}#1"] for i in range(20)]
    assert len(inner.batches) == 1
    assert backend.stats.to_dict() == {
        "requests": 20, "sent": 20, "batches": 1, "dedup_hits": 0,
        "failed_batches": 0, "largest_batch": 20,
    }  # fmt: skip


def test_waves_gather_callers_a_few_scheduling_hops_behind() -> None:
    """Callers behind a couple of task hops (gather inside a task) still join the wave."""
    inner = Recorder()
    backend = BatchingBackend(inner)

    async def nested(i: int, hops: int) -> Generation:
        if hops == 0:
            return await one(backend, f"n{i}")
        (answer,) = await asyncio.gather(nested(i, hops - 1))
        return answer

    async def main() -> None:
        direct = [one(backend, f"d{i}") for i in range(8)]
        await asyncio.gather(*direct, *(nested(i, 2) for i in range(8)))

    asyncio.run(main())
    assert [len(b) for b in inner.batches] == [16]


def test_identical_repeatable_requests_are_generated_once() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)

    async def main() -> list[Generation]:
        calls = [one(backend, "same") for _ in range(5)]
        calls += [one(backend, "seeded", temperature=0.9, seed=7) for _ in range(3)]
        return list(await asyncio.gather(*calls, one(backend, "other")))

    answers = asyncio.run(main())
    assert len(inner.batches) == 1 and len(inner.batches[0]) == 3
    assert {a.texts[0] for a in answers[:5]} == {"echo:same#1"}
    assert backend.stats.dedup_hits == 6
    # Exactly one caller per distinct request is charged for it; the copies are free and separate.
    assert sum(a.prompt_tokens for a in answers[:5]) == 5
    assert sum(a.cached for a in answers[:5]) == 4
    answers[0].texts.append("mutated")
    assert answers[1].texts == ["echo:same#1"]


def test_unseeded_sampled_requests_are_never_merged() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)
    sampled = req("sample me", temperature=0.7, n=2)

    async def main() -> list[Generation]:
        return await backend.agenerate([sampled, sampled, sampled])

    answers = asyncio.run(main())
    assert len(inner.batches[0]) == 3 and backend.stats.dedup_hits == 0
    assert all(not a.cached and len(a.texts) == 2 for a in answers)


def test_role_does_not_split_identical_requests() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)
    a = GenerationRequest(messages=({"role": "user", "content": "x"},), role="policy")
    b = GenerationRequest(messages=({"role": "user", "content": "x"},), role="reward")
    asyncio.run(backend.agenerate([a, b]))
    assert backend.stats.sent == 1


def test_waves_above_max_batch_size_are_split_oldest_first() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner, max_batch_size=4)

    async def main() -> list[Generation]:
        return list(await asyncio.gather(*(one(backend, f"q{i}") for i in range(10))))

    answers = asyncio.run(main())
    assert [[r.messages[0]["content"] for r in b] for b in inner.batches] == [
        ["q0", "q1", "q2", "q3"], ["q4", "q5", "q6", "q7"], ["q8", "q9"],
    ]  # fmt: skip
    assert [a.texts[0] for a in answers] == [f"echo:q{i}#{i // 4 + 1}" for i in range(10)]


def test_duplicates_do_not_count_toward_max_batch_size() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner, max_batch_size=2)
    asyncio.run(backend.agenerate([req("a"), req("a"), req("b"), req("a"), req("c")]))
    assert [len(b) for b in inner.batches] == [2, 1]
    assert backend.stats.dedup_hits == 2


def test_an_inner_failure_is_each_waiting_request_s_error_and_nothing_else_s() -> None:
    inner = Recorder(fail_on="poison")
    backend = BatchingBackend(inner, max_batch_size=2, max_concurrent=2)

    async def main() -> list[Generation]:
        return list(
            await asyncio.gather(one(backend, "poison"), one(backend, "x"), one(backend, "y"))
        )

    poisoned, neighbour, other_batch = asyncio.run(main())
    assert poisoned.error == neighbour.error == "batch_error: RuntimeError: CUDA out of memory"
    assert other_batch.ok and other_batch.texts
    assert backend.stats.failed_batches == 1
    assert asyncio.run(one(backend, "later")).ok  # the backend keeps working


def test_a_wrong_number_of_results_is_an_error_not_a_shift() -> None:
    backend = BatchingBackend(Recorder(wrong_length=True))
    answers = asyncio.run(backend.agenerate([req("a"), req("b")]))
    assert all(a.error and "1 results for 2" in a.error for a in answers)


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)

    async def main() -> Generation:
        doomed = asyncio.create_task(one(backend, "doomed"))
        kept = asyncio.create_task(one(backend, "kept"))
        await asyncio.sleep(0)
        doomed.cancel()
        return await kept

    assert asyncio.run(main()).texts == ["echo:kept#1"]
    assert [r.messages[0]["content"] for b in inner.batches for r in b] == ["kept"]


def test_requests_arriving_during_a_batch_leave_together_after_it() -> None:
    inner = Recorder(delay=0.05)
    backend = BatchingBackend(inner)

    async def late(i: int) -> Generation:
        await asyncio.sleep(0.001)  # arrives while the first batch is out
        return await one(backend, f"late{i}")

    async def main() -> None:
        await asyncio.gather(one(backend, "first"), *(late(i) for i in range(5)))

    asyncio.run(main())
    assert [len(b) for b in inner.batches] == [1, 5]


def test_a_loop_closed_mid_wave_does_not_block_the_next_one() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)
    loop = asyncio.new_event_loop()
    abandoned = backend.agenerate([req("abandoned")])

    async def submit_and_leave() -> None:
        abandoned.send(None)  # queued, wave check scheduled; then the loop goes away

    loop.run_until_complete(submit_and_leave())
    loop.close()
    abandoned.close()

    async def next_run() -> Generation:
        return await asyncio.wait_for(one(backend, "next"), timeout=5)

    assert asyncio.run(next_run()).texts == ["echo:next#1"]
    assert [r.messages[0]["content"] for b in inner.batches for r in b] == ["next"]


def test_a_window_gathers_requests_arriving_over_milliseconds() -> None:
    """A server's callers do not share a loop turn: the window waits for them."""
    inner = Recorder()
    backend = BatchingBackend(inner, window_s=0.2)

    async def after(delay: float, content: str) -> Generation:
        await asyncio.sleep(delay)
        return await one(backend, content)

    async def main() -> None:
        await asyncio.gather(*(after(0.01 * i, f"q{i}") for i in range(5)))

    asyncio.run(main())
    assert [len(b) for b in inner.batches] == [5]


def test_a_full_batch_does_not_wait_out_its_window() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner, max_batch_size=4, window_s=30.0)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(backend, f"q{i}") for i in range(4))), 5)

    asyncio.run(main())
    assert [len(b) for b in inner.batches] == [4]


def test_without_dedup_identical_requests_are_each_sent() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner, dedup=False)

    async def main() -> list[Generation]:
        return list(await asyncio.gather(*(one(backend, "same") for _ in range(3))))

    answers = asyncio.run(main())
    assert [len(b) for b in inner.batches] == [3] and backend.stats.dedup_hits == 0
    assert all(a.completion_tokens == 3 and not a.cached for a in answers)


def test_a_loop_closed_mid_window_does_not_block_the_next_one() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner, window_s=0.5)
    loop = asyncio.new_event_loop()
    abandoned = loop.create_task(one(backend, "abandoned"))
    loop.run_until_complete(asyncio.sleep(0.05))  # settled: the window is open
    abandoned.cancel()
    loop.close()

    async def next_run() -> Generation:
        return await asyncio.wait_for(one(backend, "next"), timeout=5)

    assert asyncio.run(next_run()).texts == ["echo:next#1"]
    assert [r.messages[0]["content"] for b in inner.batches for r in b] == ["next"]


def test_wrapper_plumbing() -> None:
    inner = Recorder()
    backend = BatchingBackend(inner)
    assert backend.cache_identity == "recorder"
    assert asyncio.run(backend.agenerate([])) == []
    backend.close()
    assert inner.closed
    with pytest.raises(ValueError):
        BatchingBackend(inner, max_batch_size=0)
    with pytest.raises(ValueError):
        BatchingBackend(inner, window_s=-1)


class Timed:
    """Answers each request after ``len(content) * 10 ms`` (a long page takes longer than a
    score); ``content == "boom"`` raises. Records the calls."""

    cache_identity = "timed"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        contents = [r.messages[-1]["content"] for r in requests]
        self.calls.append(contents)
        await asyncio.sleep(max(len(c) for c in contents) * 0.01)
        if "boom" in contents:
            raise RuntimeError("boom")
        return [Generation(texts=[c], completion_tokens=len(c)) for c in contents]

    def close(self) -> None:
        pass


def test_streaming_answers_each_caller_when_its_own_request_returns() -> None:
    """One wave, each request its own call: the short answer is not held back by the long
    one, dedup still merges identical requests, and a failing request fails alone."""
    inner = Timed()
    backend = BatchingBackend(inner, stream=True, max_concurrent=8)
    order: list[str] = []

    async def ask(content: str) -> Generation:
        answer = await one(backend, content, temperature=0.0)
        order.append(content)
        return answer

    async def main() -> list[Generation]:
        contents = ["a" * 30, "bb", "bb", "boom", "c" * 12]
        return list(await asyncio.gather(*(ask(c) for c in contents)))

    answers = asyncio.run(main())
    assert order[:2] == ["bb", "bb"] and order[-1] == "a" * 30
    assert sorted(map(tuple, inner.calls)) == sorted(
        [("a" * 30,), ("bb",), ("boom",), ("c" * 12,)]
    )  # one call per distinct request
    assert [a.texts for a in answers if a.ok] == [["a" * 30], ["bb"], ["bb"], ["c" * 12]]
    assert answers[2].cached and answers[2].completion_tokens == 0  # the copy is not charged
    assert (answers[3].error or "").startswith("batch_error: RuntimeError: boom")
    assert backend.stats.batches == 1 and backend.stats.dedup_hits == 1


def test_a_request_already_in_flight_is_not_sent_again() -> None:
    """A later wave's request identical to one an earlier wave sent and still waits for
    shares that answer (the streaming case: waves no longer wait for each other)."""
    inner = Timed()
    backend = BatchingBackend(inner, stream=True, max_concurrent=8)

    async def main() -> list[Generation]:
        first = asyncio.ensure_future(one(backend, "p" * 20, temperature=0.0))
        await asyncio.sleep(0.05)  # the first wave is with the backend
        later = asyncio.gather(
            one(backend, "p" * 20, temperature=0.0), one(backend, "q", temperature=0.0)
        )
        return [await first, *await later]

    answers = asyncio.run(main())
    assert [a.texts for a in answers] == [["p" * 20], ["p" * 20], ["q"]]
    assert sorted(map(tuple, inner.calls)) == [("p" * 20,), ("q",)]
    assert answers[1].cached and backend.stats.dedup_hits == 1
    assert backend.stats.batches == 2 and backend._inflight == {}


def test_a_batch_finishing_leaves_a_later_batch_s_same_request_in_flight() -> None:
    """Batch A's ``k`` is answered, batch B sends ``k`` again, then A ends (its long request
    done): B's ``k`` is still B's to answer."""
    inner = Timed()
    backend = BatchingBackend(inner, stream=True, max_concurrent=8)

    async def main() -> list[Generation]:
        first = asyncio.gather(
            one(backend, "k" * 20, temperature=0.0), one(backend, "L" * 30, temperature=0.0)
        )
        await asyncio.sleep(0.25)  # A's k answered at 0.2 s, its L runs until 0.3 s
        again = asyncio.ensure_future(one(backend, "k" * 20, temperature=0.0))
        return [*await first, await asyncio.wait_for(again, timeout=5)]

    answers = asyncio.run(main())
    assert [a.texts for a in answers] == [["k" * 20], ["L" * 30], ["k" * 20]]
    assert len(inner.calls) == 3 and backend._inflight == {}
