"""The contract between model roles and backends.

Everything that talks to a model (search, training-data builders, evaluation)
speaks in :class:`GenerationRequest` batches and gets :class:`Generation`
results back, whatever the backend: a local transformers+peft model, or an
OpenAI-compatible server (OpenAI, vLLM, SGLang, ``websynthesis.server``).
Requests are batches on purpose: the search engine gathers many questions per
wave and a backend is free to run them as one ``generate`` call.

A backend never raises for one bad request in a batch: the request's
:class:`Generation` carries ``error`` instead, so one failure cannot sink the
other requests of a wave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

SEED_MODULUS = 2**31  # seeds stay valid for every server (int32)
_SEED_STEP = 0x1E3779B9  # odd: 2**31 / golden ratio, so steps spread over the whole range

Message = dict[str, str]
"""One chat message: ``{"role": "system"|"user"|"assistant", "content": str}``."""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request.

    ``temperature == 0`` means greedy decoding. ``seed`` makes sampling
    reproducible (and is part of the response-cache key). ``logprobs``: ``None`` for
    none, ``k`` for each generated token's log-probability and the ``k`` likeliest
    tokens' at its position (the model's own distribution, before temperature and grammar).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the likeliest tokens at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """One chat-completion question to a backend.

    ``model`` names the LoRA adapter (or served model name) that answers; ``None``
    is the base model. ``grammar`` is an optional EBNF grammar (xgrammar /
    GBNF dialect, root rule ``root``) that the *whole* assistant output must
    match; backends that cannot enforce it say so in ``Generation.error``
    rather than silently ignoring it. ``role`` is used for accounting only.
    ``prompt``, when given, is raw text the model continues as it is (a
    ``/v1/completions`` request): no chat template, and ``messages`` is empty.
    """

    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    model: str | None = None
    grammar: str | None = None
    role: str = ""
    prompt: str | None = None


@dataclass
class Generation:
    """The answer to one request: ``n`` sampled texts plus token usage."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    cached: bool = False
    error: str | None = None
    logprobs: list[list[TokenLogprob]] | None = None  # per text, when the request asked

    @property
    def ok(self) -> bool:
        return self.error is None


def derive_seed(seed: int | None, offset: int) -> int | None:
    """Seed of sample ``offset`` of a seeded request, and of a call that starts at that sample.

    ``offset == 0`` keeps the request's seed, so an unsplit request is sent
    unchanged. Other offsets step by a large odd constant modulo ``2**31``
    rather than adding 1, because ``seed + 1`` is the next request's seed.
    Steps compose: ``derive_seed(derive_seed(s, k), j) == derive_seed(s, k + j)``,
    so on a backend that draws sample ``j`` with ``derive_seed(seed, j)`` (the
    local one) a call for samples ``k…`` gives exactly samples ``k…`` of the
    whole request, however ``n`` is split.
    """
    if seed is None or offset == 0:
        return seed
    return (seed + offset * _SEED_STEP) % SEED_MODULUS


@runtime_checkable
class Backend(Protocol):
    """Anything that answers batches of chat requests."""

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer every request, in order; one result per request."""
        ...

    def close(self) -> None:
        """Release clients, servers or device memory."""
        ...


def generate(backend: Backend, requests: Sequence[GenerationRequest]) -> list[Generation]:
    """Synchronous convenience wrapper around :meth:`Backend.agenerate`."""
    return asyncio.run(backend.agenerate(list(requests)))
