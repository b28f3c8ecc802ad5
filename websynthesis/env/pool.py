"""A pool of live environments: N browsers running episodes in parallel.

Each :class:`~websynthesis.env.browsergym_env.BrowserGymEnv` runs its browser in its own
worker process and only waits on a pipe, so plain threads are enough to drive N of them in
parallel: the GIL is released while a thread waits, and the browsers work in their own
processes. An environment is used by one caller at a time (:meth:`EnvPool.lease`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Generic, TypeVar

from websynthesis.env.base import WebEnv

E = TypeVar("E", bound=WebEnv)
T = TypeVar("T")
R = TypeVar("R")


class EnvPool(Generic[E]):
    """``size`` environments from ``make_env``, leased to one caller at a time.

    Environments are built at once but start their browsers on their first reset.
    """

    def __init__(self, make_env: Callable[[], E], size: int) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one environment, got size={size}")
        self.envs: tuple[E, ...] = tuple(make_env() for _ in range(size))
        self._idle = list(self.envs)
        self._changed = threading.Condition()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self.envs)

    @contextmanager
    def lease(self, prefer: Callable[[E], bool] | None = None) -> Iterator[E]:
        """Borrow an idle environment, waiting for one if all are busy.

        ``prefer`` picks among idle environments (say, one whose browser is already on the
        page wanted); any idle one is taken when none is preferred.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._idle or self._closed)
            if self._closed:
                raise RuntimeError("the environment pool is closed")
            chosen = next((env for env in self._idle if prefer and prefer(env)), self._idle[0])
            self._idle.remove(chosen)
        try:
            yield chosen
        finally:
            with self._changed:
                self._idle.append(chosen)
                self._changed.notify()

    def map(self, fn: Callable[[E, T], R], items: Iterable[T]) -> list[R]:
        """``fn(env, item)`` for every item, ``size`` at a time; results in item order.

        Every item runs to the end even when some raise; the exceptions are then raised
        together as an ``ExceptionGroup``. Episode code should catch ``EnvError`` itself and
        record the episode as an error, so that one broken browser costs one episode.
        """

        def run(item: T) -> R:
            with self.lease() as env:
                return fn(env, item)

        with ThreadPoolExecutor(self.size, thread_name_prefix="env") as executor:
            futures = [executor.submit(run, item) for item in items]
            wait(futures)
        errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:
            raise ExceptionGroup(f"{len(errors)} of {len(futures)} items raised", errors)
        return [future.result() for future in futures]

    def close(self) -> None:
        """Close every environment (callers still waiting for a lease get ``RuntimeError``)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for env in self.envs:
            env.close()

    def __enter__(self) -> EnvPool[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
