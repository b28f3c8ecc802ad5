"""Faults the project's server can inject, for tests and the chaos soak (``bench/soak.py``).

A :class:`FaultInjector` is handed to :func:`websynthesis.server.build_app` in code only,
never switched on from a config. It makes three sorts of failure:

- **targeted** (:meth:`~FaultInjector.fail`, :meth:`~FaultInjector.hang`): the next
  requests whose last message contains a string meet an HTTP error or a delay;
- **transport chaos** (:meth:`~FaultInjector.chaos`): a share of all requests, drawn from a
  seeded generator in arrival order, meets one fault of :data:`TRANSPORT_FAULTS`: a 500, a
  429 with ``Retry-After``, a hang past the client's timeout, a 200 whose JSON body is cut
  short, or a 200 whose body is a proxy's HTML page. A client that retries must end with the
  answers it would have had without them;
- **malformed answers** (:meth:`~FaultInjector.malform`): the model's text replaced by junk
  (empty, cut short, noise, a wrong structure) for a share of requests chosen by a hash of
  the request itself. The same request always gets the same junk, as from a model that
  writes garbage for that input: a run repeated under the same settings meets it again,
  which is what lets the soak compare a killed run with an uninterrupted one.

Every fault met is counted by kind in :attr:`FaultInjector.injected`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Transport faults of :meth:`FaultInjector.chaos`, named as the soak reports them.
TRANSPORT_FAULTS = ("server_error", "rate_limited", "hang", "truncated", "garbage")
_STATUS = {"server_error": 500, "rate_limited": 429}


@dataclass
class Fault:
    """What one request meets: an HTTP ``status``, a delay of ``hang_s`` before the answer,
    or a broken 200 ``body`` (``"truncated"``, ``"garbage"``)."""

    kind: str
    status: int | None = None
    hang_s: float = 0.0
    retry_after: float | None = None
    body: str | None = None
    message: str = "injected fault"


@dataclass
class _Targeted:
    fault: Fault
    remaining: int | None  # None: forever
    match: str | None


@dataclass
class _Chaos:
    share: float
    kinds: tuple[str, ...]
    rng: random.Random
    hang_s: float
    retry_after_s: float


class FaultInjector:
    """Make chosen or random requests fail, hang, or answer junk (see the module docstring).

    Targeted faults are checked first, in the order added, each request meeting at most one;
    transport chaos then draws for the requests no targeted fault took.
    """

    def __init__(self) -> None:
        self._targeted: list[_Targeted] = []
        self._chaos: _Chaos | None = None
        self._malform: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    def fail(
        self,
        status: int,
        times: int | None = 1,
        match: str | None = None,
        retry_after: float | None = None,
        message: str = "injected fault",
    ) -> None:
        """Answer matching requests with ``status`` (e.g. 500, 429, 400) and ``message``."""
        fault = Fault(f"http_{status}", status, retry_after=retry_after, message=message)
        with self._lock:
            self._targeted.append(_Targeted(fault, times, match))

    def hang(self, seconds: float, times: int | None = 1, match: str | None = None) -> None:
        """Delay matching requests by ``seconds`` before answering them normally."""
        with self._lock:
            self._targeted.append(_Targeted(Fault("hang", hang_s=seconds), times, match))

    def chaos(
        self,
        share: float,
        kinds: Sequence[str] = TRANSPORT_FAULTS,
        seed: int = 0,
        hang_s: float = 2.0,
        retry_after_s: float = 0.05,
    ) -> None:
        """Give ``share`` of the requests (0 stops it) one transport fault of ``kinds``; a
        ``hang`` lasts ``hang_s`` (set it past the client's timeout), a 429 asks for
        ``retry_after_s``."""
        unknown = sorted(set(kinds) - set(TRANSPORT_FAULTS))
        if unknown or not 0.0 <= share <= 1.0:
            raise ValueError(
                f"chaos: share in [0, 1] and kinds of {TRANSPORT_FAULTS}, not {unknown}"
            )
        with self._lock:
            self._chaos = (
                _Chaos(share, tuple(kinds), random.Random(seed), hang_s, retry_after_s)
                if share > 0
                else None
            )

    def malform(self, share: float, seed: int = 0) -> None:
        """Replace the model's answers with junk for ``share`` of the distinct requests
        (chosen by a hash of the request and ``seed``; 0 stops it)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"malform: share in [0, 1], not {share}")
        with self._lock:
            self._malform = (share, seed) if share > 0 else None

    def clear(self) -> None:
        with self._lock:
            self._targeted.clear()
            self._chaos = None
            self._malform = None

    def take(self, last: str) -> Fault | None:
        """The fault a request whose last message (or prompt) is ``last`` meets, if any
        (counted as met)."""
        with self._lock:
            fault = self._take_targeted(last) or self._take_chaos()
            if fault is not None:
                self.injected[fault.kind] += 1
            return fault

    def _take_targeted(self, last: str) -> Fault | None:
        for targeted in self._targeted:
            if targeted.remaining == 0 or (
                targeted.match is not None and targeted.match not in last
            ):
                continue
            if targeted.remaining is not None:
                targeted.remaining -= 1
            return targeted.fault
        return None

    def _take_chaos(self) -> Fault | None:
        chaos = self._chaos
        if chaos is None or chaos.rng.random() >= chaos.share:
            return None
        kind = chaos.rng.choice(chaos.kinds)
        if kind in _STATUS:
            retry = chaos.retry_after_s if kind == "rate_limited" else None
            return Fault(kind, _STATUS[kind], retry_after=retry, message=f"injected {kind}")
        if kind == "hang":
            return Fault(kind, hang_s=chaos.hang_s)
        return Fault(kind, body=kind)

    def malformed(self, request: dict[str, Any], texts: Sequence[str]) -> list[str] | None:
        """Junk in place of ``texts`` (the model's answers to ``request``, a JSON-able
        description of it) when this request is one of the malformed share, else ``None``."""
        with self._lock:
            if self._malform is None:
                return None
            share, seed = self._malform
        digest = hashlib.sha256(
            json.dumps([seed, request], sort_keys=True, default=str).encode()
        ).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= share:
            return None
        rng = random.Random(digest)
        with self._lock:
            self.injected["malformed"] += 1
        return [_junk(text, rng) for text in texts]


def _junk(text: str, rng: random.Random) -> str:
    """One kind of bad model output, drawn by ``rng``."""
    kind = rng.randrange(5)
    if kind == 0:
        return ""
    if kind == 1:
        return text[: len(text) // 2]  # cut short: max_new_tokens reached mid-answer
    if kind == 2:
        return "".join(rng.choice("[]{}()<>\"'\\ \n\tab01#") for _ in range(rng.randrange(1, 80)))
    if kind == 3:
        return json.dumps({"answer": text[:40], "note": "not the format asked for"})
    return (text.split() or ["the"])[0] * rng.randrange(2, 50)  # a degenerate repetition


def broken_body(kind: str, body: bytes) -> tuple[bytes, str]:
    """A 200's body broken as ``kind`` says (``truncated``: the JSON cut in half;
    ``garbage``: a proxy's HTML page), and its media type."""
    if kind == "truncated":
        return body[: len(body) // 2], "application/json"
    return b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
