"""A :class:`Backend` wrapper that turns many callers' requests into few batches.

The search engine runs many trees as coroutines on one event loop. Each of them
asks for a handful of generations at a time; a GPU (or an inference server)
answers a batch of 64 almost as fast as a batch of 1. :class:`BatchingBackend`
collects what the coroutines submit in one *wave* and sends it to the inner
backend as one ``agenerate`` call.

**Waves.** The first request of a wave schedules a check on the event loop
(``call_soon``). The check runs after every callback already queued, i.e.
after every coroutine that was ready at the same time has run up to its next
``await``; if anything arrived since the previous check it looks again, and
only after ``settle_ticks`` consecutive loop turns with no new request does it
send the batch. The extra turns catch coroutines that are a few scheduling hops
behind (a task woken by ``asyncio.gather``, a child task of an expansion), so a
wave is "everything that became ready together", not "whatever came first".

**A window** (``window_s``, for a server whose callers do not share an event-loop turn:
HTTP requests arriving over a few milliseconds): once the wave has settled, the batch
waits until ``window_s`` after its oldest request arrived, or until ``max_batch_size``
distinct requests wait, whichever is first. ``window_s=0`` (the engine's case) sends it
as soon as it settles.

**One batch at a time** (``max_concurrent=1``): while a batch is with the inner
backend, new requests queue up and leave together, as one bigger batch, when it
returns. A local GPU runs one batch at a time anyway; an inference server can
take more (raise ``max_concurrent``).

**Splitting.** At most ``max_batch_size`` distinct requests per inner call; a
larger wave is sent in several calls, oldest requests first.

**Dedup.** Identical requests in one batch are generated once and the answer is
copied to each caller (as is a request identical to one an earlier batch sent and is still
waiting for: it is not sent again); the copies carry ``cached=True`` and zero token counts,
since nothing was spent for them (the response cache's convention). Only
repeatable requests are merged: greedy (``temperature == 0``) or seeded ones.
Two identical unseeded sampled requests ask for two *different* samples and are
both sent. ``role`` (accounting only) is not part of the identity. ``dedup=False`` sends
every request (a server answering separate clients bills each its own tokens).

**Streaming** (``stream=True``, for an inner backend that batches continuously: the local
backend with ``continuous=True``, a vLLM or SGLang server): a call answers when its last
request does, so one call per batch would hold a short answer (a score) until the batch's
longest (a page) is done. Each distinct request then goes out as its own call, all in the same
event-loop turn (the backend below gathers them again: the local one plans every call it
received since its last step as one batch), and each caller is answered as soon as its
request is. Waves still form here (dedup, the window), and with ``max_concurrent`` above one
a wave never waits for the one before.

**Failures.** If the inner call raises, or returns the wrong number of results,
every request of that call gets a :class:`Generation` with ``error`` set; the
exception never reaches the waiting coroutines, nor the callers of other batches.
A caller cancelled while waiting is simply not answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from websynthesis.backends.cache import is_cacheable
from websynthesis.backends.types import Backend, Generation, GenerationRequest
from websynthesis.counters import Counters

_Waiter = tuple[GenerationRequest, "asyncio.Future[Generation]", str, float]
"""A queued request, the future its caller awaits, its dedup key and its arrival (loop time)."""


@dataclass
class BatchingStats(Counters):
    """``requests`` submitted, ``sent`` to the inner backend in ``batches`` calls.

    ``dedup_hits`` = requests answered by another request's generation;
    ``failed_batches`` = inner calls that raised or answered wrongly.
    """

    requests: int = 0
    sent: int = 0
    batches: int = 0
    dedup_hits: int = 0
    failed_batches: int = 0
    largest_batch: int = 0


class BatchingBackend:
    """Gathers concurrent ``agenerate`` calls into batched calls of ``inner``.

    Args:
        inner: the backend that answers the batches.
        max_batch_size: most distinct requests per inner call.
        max_concurrent: inner calls in flight at once.
        settle_ticks: quiet event-loop turns that close a wave.
        window_s: how long after its oldest request a settled batch may wait for more.
        dedup: answer identical repeatable requests of a batch with one generation.
        stream: send a batch's requests as calls of one request each, all at once, and
            answer each caller when its own call returns (see **Streaming**).
    """

    def __init__(
        self,
        inner: Backend,
        max_batch_size: int = 64,
        max_concurrent: int = 1,
        settle_ticks: int = 3,
        window_s: float = 0.0,
        dedup: bool = True,
        stream: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_concurrent < 1 or settle_ticks < 1:
            raise ValueError("max_batch_size, max_concurrent and settle_ticks must be >= 1")
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.inner = inner
        self.max_batch_size = max_batch_size
        self.max_concurrent = max_concurrent
        self.settle_ticks = settle_ticks
        self.window_s = window_s
        self.dedup = dedup
        self.stream = stream
        self.stats = BatchingStats()
        self._queue: deque[_Waiter] = deque()
        self._arrivals = 0
        self._seen = 0
        self._quiet = 0
        self._armed: asyncio.AbstractEventLoop | None = None
        # A settled batch waiting out its window: the loop and the timer that launches it.
        self._window: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Requests sent and not yet answered, by key: the callers each answer goes to.
        self._inflight: dict[str, list[asyncio.Future[Generation]]] = {}
        self._unique = itertools.count()

    def __repr__(self) -> str:
        return f"BatchingBackend({self.inner!r}, max_batch_size={self.max_batch_size})"

    @property
    def cache_identity(self) -> Any:
        """The inner backend's, so a response cache can sit on top of the batcher."""
        return getattr(self.inner, "cache_identity", None)

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Generation]] = []
        now = loop.time()
        for request in requests:
            future: asyncio.Future[Generation] = loop.create_future()
            self._queue.append((request, future, self._key(request), now))
            futures.append(future)
        self._arrivals += len(requests)
        self.stats.requests += len(requests)
        window = self._window
        if window is not None and window[0] is loop and self._distinct() >= self.max_batch_size:
            window[1].cancel()  # full: no reason to wait out the window
            self._window = None
            self._launch(loop)
        self._arm(loop)
        return list(await asyncio.gather(*futures))

    def close(self) -> None:
        self.inner.close()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching for the end of the wave, unless already watching on this loop.

        Keyed by loop: a check left behind by a loop that was closed mid-wave
        (an interrupted ``asyncio.run``) must not block the next one.
        """
        if self._window is not None:
            if self._window[0] is loop:
                return  # a settled batch is waiting out its window; it launches then
            self._window = None  # a loop that went away mid-window
        if self._armed is not loop:
            self._armed = loop
            self._seen, self._quiet = self._arrivals, 0
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count quiet loop turns; launch when the wave has settled."""
        if self._arrivals != self._seen:
            self._seen, self._quiet = self._arrivals, 0
        else:
            self._quiet += 1
        if self._quiet < self.settle_ticks:
            loop.call_soon(self._tick, loop)
            return
        self._armed = None
        wait = self._queue[0][3] + self.window_s - loop.time() if self._queue else 0.0
        if wait > 0 and self._distinct() < self.max_batch_size:
            self._window = (loop, loop.call_later(wait, self._window_closed, loop))
            return
        self._launch(loop)

    def _window_closed(self, loop: asyncio.AbstractEventLoop) -> None:
        self._window = None
        self._launch(loop)

    def _distinct(self) -> int:
        return len({waiter[2] for waiter in self._queue})

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send batches, oldest requests first, while inner calls may start."""
        while self._queue and self._running < self.max_concurrent:
            batch = self._take(loop)
            if batch:
                self._running += 1
                task = loop.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[_Waiter]:
        """Pop waiters, oldest first, up to ``max_batch_size`` distinct requests.

        Waiters nobody awaits any more are dropped: cancelled ones, and those
        of an event loop that has gone away.
        """
        batch: list[_Waiter] = []
        keys: set[str] = set()
        queue = self._queue
        while queue:
            waiter = queue[0]
            key = waiter[2]
            if key not in keys and len(keys) == self.max_batch_size:
                break
            queue.popleft()
            if waiter[1].done() or waiter[1].get_loop() is not loop:
                continue
            batch.append(waiter)
            keys.add(key)
        return batch

    async def _send(self, batch: list[_Waiter]) -> None:
        # Each distinct request once; one already on its way (sent by an earlier batch still
        # in flight) is not sent again: its callers wait for that answer.
        unique: list[tuple[str, GenerationRequest]] = []
        inflight = self._inflight
        mine: dict[str, list[asyncio.Future[Generation]]] = {}
        for request, future, key, _ in batch:
            if key not in inflight:
                inflight[key] = mine[key] = []
                unique.append((key, request))
            inflight[key].append(future)
        stats = self.stats
        stats.batches += 1
        stats.sent += len(unique)
        stats.dedup_hits += len(batch) - len(unique)
        stats.largest_batch = max(stats.largest_batch, len(unique))
        try:
            if self.stream:  # each its own call, all at once: each answered when it returns
                await asyncio.gather(*(self._answer_one(key, r) for key, r in unique))
            elif unique:
                answers = await self._call([request for _, request in unique])
                for (key, _), answer in zip(unique, answers, strict=True):
                    _deliver(answer, inflight.pop(key))
        finally:
            for key, futures in mine.items():  # cancelled: nobody is answered any more
                if inflight.get(key) is futures:  # not a later batch's same request
                    del inflight[key]
            self._running -= 1
            if self._queue:
                self._arm(asyncio.get_running_loop())

    def _key(self, request: GenerationRequest) -> str:
        """Requests with the same key get the same answer; unrepeatable ones never share one."""
        if not self.dedup or not is_cacheable(request):
            return f"#{next(self._unique)}"
        sampling = request.sampling
        return json.dumps(
            [
                request.messages,
                request.prompt,
                request.model,
                request.grammar,
                sampling.temperature,
                sampling.top_p,
                sampling.max_new_tokens,
                sampling.n,
                sampling.seed,
                sampling.logprobs,
            ],
            sort_keys=True,
            ensure_ascii=False,
        )

    async def _answer_one(self, key: str, request: GenerationRequest) -> None:
        (answer,) = await self._call([request])
        _deliver(answer, self._inflight.pop(key))

    async def _call(self, requests: list[GenerationRequest]) -> list[Generation]:
        """The inner call, with every failure turned into per-request errors."""
        try:
            answers = await self.inner.agenerate(requests)
        except Exception as exc:  # any inner failure belongs to this batch's requests only
            self.stats.failed_batches += 1
            return [_failed(f"batch_error: {type(exc).__name__}: {exc}") for _ in requests]
        if len(answers) != len(requests):
            self.stats.failed_batches += 1
            message = f"batch_error: backend returned {len(answers)} results for {len(requests)}"
            return [_failed(message) for _ in requests]
        return list(answers)


def _deliver(answer: Generation, futures: list[asyncio.Future[Generation]]) -> None:
    """``answer`` to the callers of one request: the first still waiting is charged the
    tokens, the others get copies."""
    charged = False
    for future in futures:
        if not future.done():
            future.set_result(_copy(answer) if charged else answer)
            charged = True


def _copy(answer: Generation) -> Generation:
    """Another caller's copy of a deduplicated answer: own lists, no tokens spent."""
    if not answer.ok:
        return replace(answer, texts=list(answer.texts), finish_reasons=list(answer.finish_reasons))
    return replace(
        answer,
        texts=list(answer.texts),
        finish_reasons=list(answer.finish_reasons),
        prompt_tokens=0,
        completion_tokens=0,
        cached=True,
    )


def _failed(message: str) -> Generation:
    return Generation(texts=[], error=message)
