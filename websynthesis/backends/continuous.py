"""Continuous batching in the local backend: chunks join a running decode between steps.

Why: decoding a chunk runs until its longest row ends (a world-model page of hundreds
of tokens), and requests that arrive meanwhile wait for the whole chunk; the last steps of
every chunk then run with a few rows while the model could take the full batch almost as
fast. Here a worker thread owns the model's decode loop and, between two steps, admits
what has arrived: the requests waiting are cut into chunks as the chunk decode cuts a call,
each chunk is prefilled (its shared prefixes once, and what it shares with earlier chunks'
prefixes read from a :class:`~websynthesis.backends.prefill.PrefixCache`), and its rows
decode from the next step on in the same forward as the rows already running; a request is
answered as soon as its own rows end, not when its chunk does. Admission keeps a cadence
(see :meth:`ContinuousDecoder._admit`): every chunk running is a prefill and a cohort more
per step, which costs more than a few rows gain.

What stays the chunk decode's: a chunk is a :class:`~websynthesis.backends.cascade.Cohort`
over its own :class:`~websynthesis.backends.cascade.Cascade` (its sampling, grammars,
seeds, logprobs and finished rows are its own), so a row's tokens depend on its request
and seed, not on what it shares a step with (up to the floating-point order of a wider
matmul: near-tied tokens may differ, which is why the backend's default is the chunk
decode, reproducible run to run, and this mode is asked for with ``continuous=True``).
Adapters are per row: one forward serves rows of several adapters through peft's mixed
batch, or an active adapter when every live row shares one.

Failures: a chunk whose prefill fails, and every chunk in flight when a step fails, are
run again by the chunk decode, request by request where needed, so one bad request fails
alone (``LocalBackend._run_safely``); nothing a caller waits for is left unanswered.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from websynthesis.backends.cascade import Cascades, Cohort, cascade_attention_on, forward
from websynthesis.backends.prefill import PrefixCache
from websynthesis.backends.types import Generation, GenerationRequest

if TYPE_CHECKING:
    from websynthesis.backends.local import LocalBackend, _Item

log = logging.getLogger(__name__)

# The most steps a request waits while a decode runs, however few rows it would add.
ADMIT_AFTER_STEPS = 32
# Chunk prefixes kept for later chunks (a 7B model's 2,000-token prefix is ~110 MB of KV).
PREFIX_CACHE_ENTRIES = 8


@dataclass
class Running:
    """A chunk in the decode: its cohort, and where each request's rows are."""

    chunk: list[_Item]
    futures: list[Future[Generation]]
    cohort: Cohort
    spans: list[range]  # the cohort's rows of each request of ``chunk``
    answered: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.answered = [False] * len(self.chunk)


@dataclass
class _Waiting:
    """A checked request waiting to join, its caller's future, and the step it arrived at."""

    item: _Item
    future: Future[Generation]
    since: int

    @property
    def rows(self) -> int:
        return self.item.request.sampling.n


class ContinuousDecoder:
    """The worker thread that decodes ``backend``'s requests, admitting them between steps.

    Args:
        backend: the local backend whose model, checks, chunking, prefill and collection
            this drives (and whose lock it holds while it touches the model).
    """

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self._submitted: deque[tuple[list[GenerationRequest], list[Future[Generation]]]] = deque()
        self._waiting: list[_Waiting] = []
        self._steps = 0  # steps taken: how long a waiting request has waited
        self._running: list[Running] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.prefixes = PrefixCache(PREFIX_CACHE_ENTRIES)

    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        """Queue ``requests``; each future gets its request's :class:`Generation`."""
        futures: list[Future[Generation]] = [Future() for _ in requests]
        with self._wake:
            if self._closed:
                raise RuntimeError("this LocalBackend is closed")
            self._submitted.append((requests, futures))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="continuous-decode", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return futures

    def close(self) -> None:
        """Stop the worker after its current step; unanswered requests get an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    # --- the worker -------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while self._next():
                pass
        except BaseException as error:  # a bug here must not leave callers waiting forever
            log.exception("the continuous decode stopped")
            self._fail_all(f"internal: {type(error).__name__}: {error}")
            raise
        self._fail_all("internal: the backend was closed")

    def _next(self) -> bool:
        """One round: take what was submitted, admit what fits, run one step."""
        with self._wake:
            while not (self._closed or self._submitted or self._waiting or self._running):
                self._wake.wait()
            if self._closed:
                return False
            submitted = list(self._submitted)
            self._submitted.clear()
        if submitted:  # every call since the last step is one batch: they share chunks
            self._plan(
                [request for requests, _ in submitted for request in requests],
                [future for _, futures in submitted for future in futures],
            )
        with self.backend._lock:
            self._admit()
            if self._running:
                self._step()
        return True

    def _plan(self, requests: list[GenerationRequest], futures: list[Future[Generation]]) -> None:
        """Check one submission; rejected requests are answered, the others wait to join."""
        rejected, items = self.backend._checked(requests)
        for index, generation in rejected.items():
            _answer(futures[index], generation)
        for item in items:
            self._waiting.append(_Waiting(item, futures[item.index], self._steps))

    def _admit(self) -> None:
        """Start what waits, as chunks of everything waiting, while their rows fit the batch.

        Not at every step: each admission is a prefill and a cohort more for every step to
        go through (a call per layer, a grammar fill, a token choice), which costs more than
        the rows it adds when they are few. Requests join when nothing runs, when they would
        fill at least half the free rows, or once the oldest has waited ``ADMIT_AFTER_STEPS``.
        """
        waiting = [w for w in self._waiting if not w.future.cancelled()]
        self._waiting = waiting
        if not waiting:
            return
        backend = self.backend
        live = sum(len(running.cohort.rows) for running in self._running)
        free = backend.max_batch_size - live
        rows = sum(w.rows for w in waiting)
        oldest = min(w.since for w in waiting)
        if self._running and not (
            rows >= max(1, free // 2) or self._steps - oldest >= ADMIT_AFTER_STEPS
        ):
            return
        of_item = {id(w.item): w for w in waiting}
        left: list[_Waiting] = []
        for chunk in backend._chunked([w.item for w in waiting]):
            members = [of_item[id(item)] for item in chunk]
            if self._running and sum(w.rows for w in members) > backend.max_batch_size - live:
                left += members  # no room this step: they wait, keeping their arrival
                continue
            futures = [w.future for w in members]
            try:
                running = self._start(chunk, futures)
            except Exception as error:
                log.warning("prefill of a chunk of %d failed (%r)", len(chunk), error)
                self._rerun(chunk, futures)
                continue
            if self._running:
                backend.stats.joined += 1
            self._running.append(running)
            live += len(running.cohort.rows)
        self._waiting = left

    def _start(self, chunk: list[_Item], futures: list[Future[Generation]]) -> Running:
        with self.backend._adapters_for([item.adapter for item in chunk]):
            cohort, ns = self.backend._cohort(chunk, names=True)
        spans, start = [], 0
        for n in ns:
            spans.append(range(start, start + n))
            start += n
        return Running(chunk, futures, cohort, spans)

    @torch.inference_mode()
    def _step(self) -> None:
        """One forward for every running row, each cohort's tokens taken from its logits."""
        backend = self.backend
        running = self._running
        cohorts = [r.cohort for r in running]
        ids = torch.cat([cohort.ids for cohort in cohorts])
        positions = torch.cat([cohort.positions for cohort in cohorts])
        sizes = [len(cohort.rows) for cohort in cohorts]
        names = [name for cohort in cohorts for name in cohort.names or ()]
        try:
            with backend._adapters_for(names) as mixed, cascade_attention_on(backend._base_config):
                mask = cohorts[0].cascade if len(cohorts) == 1 else Cascades(cohorts, sizes)
                logits = forward(backend.model, ids, positions, mask, mixed)
            for cohort, part in zip(cohorts, logits.split(sizes), strict=True):
                cohort.advance(part)
        except Exception as error:
            log.warning(
                "a decode step of %d chunks failed (%r); rerunning them", len(running), error
            )
            self._running = []
            for r in running:
                left = [k for k, done in enumerate(r.answered) if not done]
                self._rerun([r.chunk[k] for k in left], [r.futures[k] for k in left])
            return
        self._steps += 1
        backend.stats.decode_steps += 1
        backend.stats.step_rows += sum(sizes)
        for r in running:
            self._answer_done(r)
        self._running = [r for r in running if not r.cohort.finished]

    def _answer_done(self, running: Running) -> None:
        """Answer each request of ``running`` whose rows have all ended."""
        cohort = running.cohort
        for k, span in enumerate(running.spans):
            if running.answered[k] or not (
                cohort.finished or all(cohort.done[row] for row in span)
            ):
                continue
            running.answered[k] = True
            logprobs = None
            if cohort.logprobs is not None:
                logprobs = [cohort.logprobs[row] for row in span]
            item = running.chunk[k]
            (generation,) = self.backend._collect(
                [item],
                [len(span)],
                [cohort.tokens[row] for row in span],
                logprobs,
            )
            _answer(running.futures[k], generation)

    def _rerun(self, chunk: list[_Item], futures: list[Future[Generation]]) -> None:
        """Run ``chunk`` by the chunk decode (which isolates a failing request)."""
        if chunk:
            for future, generation in zip(futures, self.backend._run_safely(chunk), strict=True):
                _answer(future, generation)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            submitted = list(self._submitted)
            self._submitted.clear()
        futures = [f for _, fs in submitted for f in fs]
        futures += [waiting.future for waiting in self._waiting]
        futures += [f for running in self._running for f in running.futures]
        self._waiting = []
        self._running = []
        for future in futures:
            if not future.done():
                _answer(future, Generation(texts=[], error=message))


def _answer(future: Future[Generation], generation: Generation) -> None:
    """Set ``future`` unless its caller gave up on it."""
    if future.set_running_or_notify_cancel():
        future.set_result(generation)
