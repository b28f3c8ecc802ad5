"""A :class:`Backend` that asks any OpenAI-compatible chat server.

OpenAI itself, vLLM (``--enable-lora --lora-modules policy=… world_model=…``),
SGLang, or ``websynthesis.server`` all speak ``POST /v1/chat/completions``; the
requests of one batch are sent concurrently through one
:class:`openai.AsyncOpenAI` client, at most ``max_concurrency`` at a time, and
the server does the batching. A request's ``model`` is the served model or
adapter name; without one the backend's base ``model`` answers.

Retries are ours, not the client's (``max_retries=0`` there): the client's loop
cannot be counted or tuned, and a request waiting out its backoff should not
hold one of the ``max_concurrency`` slots. Retried: 429, 5xx, 408/409, timeouts,
connection errors and unreadable 200s (a body cut short, a proxy's HTML page), with
exponential backoff and jitter, honouring a server's ``Retry-After``. Never retried:
other 4xx (bad request, auth, unknown model, context length), which would fail again.
What still fails becomes that request's ``Generation.error`` as ``"<kind>: <message>"``
(kinds in :data:`ERROR_KINDS`); the rest of the batch is unaffected.

The API key is read from the environment variable *named* by ``api_key_env``
and handed to the HTTP client only (a private attribute, which cannot be
pickled): no public attribute, ``repr`` or error message holds it (auth errors
get a fixed text, and any echo of the key by a server is masked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from openai import AsyncOpenAI

from websynthesis.backends.types import Generation, GenerationRequest, TokenLogprob, derive_seed
from websynthesis.counters import Counters

log = logging.getLogger(__name__)

GrammarMode = Literal["none", "vllm", "vllm_legacy", "sglang", "websynthesis"]
ERROR_KINDS = (
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "context_length",
    "auth",
    "not_found",
    "grammar_unsupported",
    "bad_response",
    "internal",
)
_RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection", "bad_response"})
_MAX_RETRY_AFTER_S = 120.0
_NO_KEY = "EMPTY"  # what vLLM / SGLang / our server accept when they need no key


def _grammar_body(mode: GrammarMode, grammar: str) -> dict[str, Any]:
    """The request fields that carry an EBNF grammar in each server's dialect."""
    if mode == "vllm":  # vLLM >= 0.10.2; guided_grammar was removed in 0.12
        return {"structured_outputs": {"grammar": grammar}}
    if mode == "vllm_legacy":
        return {"guided_grammar": grammar}
    if mode == "sglang":
        return {"ebnf": grammar}
    if mode == "websynthesis":
        return {"grammar": grammar}
    raise ValueError(f"grammar_mode {mode!r} cannot send a grammar")


@dataclass
class BackendStats(Counters):
    """What the backend did: HTTP calls made, retries (in all and by the kind of failure
    retried), and final errors by kind."""

    calls: int = 0
    retries: int = 0
    retried: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class _CallFailed(Exception):
    """A call that failed for good; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class _LoopState:
    """The backend's own event loop, in a daemon thread, and what lives on it."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    client: AsyncOpenAI
    semaphore: asyncio.Semaphore


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server, with bounded concurrency and retries.

    Args:
        model: base model name on the server (the request's ``model``, when
            set, overrides it: a LoRA adapter or other served name).
        base_url: e.g. ``http://127.0.0.1:8000/v1``; ``None`` is OpenAI's API.
        api_key_env: NAME of the environment variable holding the key. When it
            is unset or empty the placeholder ``EMPTY`` is sent, which local
            servers accept; for OpenAI's own API (``base_url=None``) a missing
            key is an error at construction.
        max_concurrency: most requests in flight at once.
        max_retries: retries per call after the first attempt.
        timeout_s: per-call timeout (the whole HTTP request).
        backoff_base_s, backoff_max_s: retry ``k`` waits a uniformly jittered
            ``[0.5, 1] * min(backoff_max_s, backoff_base_s * 2**k)``.
        max_n_per_call: servers that cap ``n`` get several calls per request;
            ``None`` sends ``n`` as is. A server that silently returns fewer
            choices than asked is asked again for the rest.
        grammar_mode: how grammars are sent (see :func:`_grammar_body`);
            ``none`` for servers that cannot constrain output.
        on_unsupported_grammar: with ``grammar_mode=none``, ``error`` fails a
            request that has a grammar; ``ignore`` sends it unconstrained.
        max_tokens_field: ``max_tokens`` (vLLM, SGLang, ours) or
            ``max_completion_tokens`` (OpenAI's reasoning models need it).
        extra_body: extra request fields for every call (e.g. vLLM's ``top_k`` or
            ``chat_template_kwargs``).
        revision: your name for what the server serves under ``model`` (say, the
            adapter's checkpoint); part of the response cache's key, so a model retrained
            and re-served under the same name is not answered from the old cache.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_n_per_call: int | None = None,
        grammar_mode: GrammarMode = "none",
        on_unsupported_grammar: Literal["error", "ignore"] = "error",
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        extra_body: Mapping[str, Any] | None = None,
        revision: str | None = None,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        if max_n_per_call is not None and max_n_per_call < 1:
            raise ValueError("max_n_per_call must be >= 1 or None")
        if grammar_mode not in ("none", "vllm", "vllm_legacy", "sglang", "websynthesis"):
            raise ValueError(f"unknown grammar_mode {grammar_mode!r}")
        if on_unsupported_grammar not in ("error", "ignore"):
            raise ValueError(f"unknown on_unsupported_grammar {on_unsupported_grammar!r}")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_n_per_call = max_n_per_call
        self.grammar_mode = grammar_mode
        self.on_unsupported_grammar = on_unsupported_grammar
        self.max_tokens_field = max_tokens_field
        self.extra_body: dict[str, Any] = _plain(extra_body or {})
        self.revision = revision
        self.stats = BackendStats()
        if base_url is None and not self._read_key():
            raise ValueError(
                f"OpenAI's API needs a key: set the environment variable {api_key_env!r}"
            )
        self._state: _LoopState | None = None
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"grammar_mode={self.grammar_mode!r})"
        )

    @property
    def carries_grammars(self) -> bool:
        """Whether requests' grammars reach the server (``grammar_mode`` names its dialect)."""
        return self.grammar_mode != "none"

    @property
    def cache_identity(self) -> dict[str, Any]:
        """What makes answers of this backend differ from another's (see ``cache.py``): the
        server (its URL), its grammar dialect and extra request fields, the served model,
        and ``revision``, the user's name for what is served under it (a server cannot say
        that an adapter was retrained and re-served under the same name)."""
        return {
            "kind": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "grammar_mode": self.grammar_mode,
            "extra_body": self.extra_body,
            "revision": self.revision,
        }

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer on the backend's own loop, whatever loop (or ``asyncio.run``) the caller has."""
        state = self._loop_state()
        future = asyncio.run_coroutine_threadsafe(self._agenerate(state, requests), state.loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Close the HTTP client and stop the backend's loop (a later call starts them again)."""
        with self._state_lock:
            state, self._state = self._state, None
        if state is None:
            return
        asyncio.run_coroutine_threadsafe(state.client.close(), state.loop).result(timeout=30)
        state.loop.call_soon_threadsafe(state.loop.stop)
        state.thread.join(timeout=30)
        state.loop.close()

    def _read_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def _loop_state(self) -> _LoopState:
        """The loop that owns the client and semaphore, started on first use.

        One loop for the backend's lifetime, rather than the caller's: connections
        are pooled across batches even when each batch is its own ``asyncio.run``
        (:func:`~websynthesis.backends.types.generate`), the client can be closed
        properly, and ``max_concurrency`` bounds all callers together.
        """
        with self._state_lock:
            if self._state is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="openai-backend", daemon=True
                )
                thread.start()
                client = AsyncOpenAI(
                    api_key=self._read_key() or _NO_KEY,
                    base_url=self.base_url,
                    max_retries=0,
                    timeout=self.timeout_s,
                )
                semaphore = asyncio.Semaphore(self.max_concurrency)
                self._state = _LoopState(loop, thread, client, semaphore)
            return self._state

    async def _agenerate(
        self, state: _LoopState, requests: Sequence[GenerationRequest]
    ) -> list[Generation]:
        results = await asyncio.gather(
            *(self._generate_one(state, r) for r in requests), return_exceptions=True
        )
        generations = []
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.error("request failed unexpectedly", exc_info=result)
                self.stats.errors["internal"] += 1
                result = Generation(texts=[], error=f"internal: {type(result).__name__}: {result}")
            generations.append(result)
        return generations

    async def _generate_one(self, state: _LoopState, request: GenerationRequest) -> Generation:
        grammar_body: dict[str, Any] = {}
        if request.grammar is not None:
            if self.grammar_mode != "none":
                grammar_body = _grammar_body(self.grammar_mode, request.grammar)
            elif self.on_unsupported_grammar == "error":
                self.stats.errors["grammar_unsupported"] += 1
                return Generation(
                    texts=[], error="grammar_unsupported: grammar not supported by this backend"
                )
        wanted = request.sampling.n
        texts: list[str] = []
        reasons: list[str] = []
        logprobs: list[list[TokenLogprob]] = []
        prompt_tokens = completion_tokens = 0
        while len(texts) < wanted:
            n = wanted - len(texts)
            if self.max_n_per_call is not None:
                n = min(n, self.max_n_per_call)
            try:
                response = await self._call(
                    state, request, n, derive_seed(request.sampling.seed, len(texts)), grammar_body
                )
            except _CallFailed as failed:
                self.stats.errors[failed.kind] += 1
                return Generation(
                    texts=[],
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    error=str(failed),
                )
            if response.usage is not None:
                prompt_tokens += response.usage.prompt_tokens
                completion_tokens += response.usage.completion_tokens
            if not response.choices:
                self.stats.errors["bad_response"] += 1
                return Generation(
                    texts=[],
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    error="bad_response: the server returned no choices",
                )
            for choice in sorted(response.choices, key=lambda c: c.index)[:n]:
                text = choice.text if request.prompt is not None else choice.message.content
                texts.append(text or "")
                if request.sampling.logprobs is not None:
                    logprobs.append(_token_logprobs(choice.logprobs, request.prompt is not None))
                reasons.append(choice.finish_reason or "")
        return Generation(
            texts=texts,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reasons=reasons,
            logprobs=logprobs if request.sampling.logprobs is not None else None,
        )

    async def _call(
        self,
        state: _LoopState,
        request: GenerationRequest,
        n: int,
        seed: int | None,
        grammar_body: Mapping[str, Any],
    ) -> Any:
        """One chat completion (a text completion for a raw ``prompt``), retried on transient
        failures; raises :class:`_CallFailed`."""
        sampling = request.sampling
        kwargs: dict[str, Any] = {
            "model": request.model or self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": n,
            "timeout": self.timeout_s,
        }
        top = sampling.logprobs
        if request.prompt is not None:
            endpoint = state.client.completions
            kwargs |= {"prompt": request.prompt, "max_tokens": sampling.max_new_tokens}
            if top is not None:
                kwargs["logprobs"] = top
        else:
            endpoint = state.client.chat.completions
            kwargs["messages"] = list(request.messages)
            kwargs[self.max_tokens_field] = sampling.max_new_tokens
            if top is not None:
                kwargs |= {"logprobs": True, "top_logprobs": top}
        if seed is not None:
            kwargs["seed"] = seed
        extra_body = self.extra_body | dict(grammar_body)
        if extra_body:
            kwargs["extra_body"] = extra_body
        for attempt in range(self.max_retries + 1):
            async with state.semaphore:
                self.stats.calls += 1
                retry_after = None
                try:
                    response = await endpoint.create(**kwargs)
                except openai.APIError as exc:
                    kind, message = self._classify(exc)
                    retry_after = _retry_after(exc)
                except json.JSONDecodeError as exc:  # a 200 whose JSON is cut short
                    kind, message = "bad_response", f"unreadable body ({type(exc).__name__})"
                else:
                    if hasattr(response, "choices"):
                        return response
                    # the client hands back a non-JSON body (a proxy's HTML page) as text
                    kind, message = "bad_response", f"not a completion: {str(response)[:80]!r}"
            if kind not in _RETRYABLE or attempt == self.max_retries:
                break
            self.stats.retries += 1
            self.stats.retried[kind] += 1
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "%s (%s); retry %d/%d in %.2fs", kind, message, attempt + 1, self.max_retries, delay
            )
            await asyncio.sleep(delay)
        raise _CallFailed(kind, message)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return ceiling * random.uniform(0.5, 1.0)

    def _classify(self, exc: openai.APIError) -> tuple[str, str]:
        """The error kind and a key-free message."""
        if isinstance(exc, openai.APITimeoutError):
            return "timeout", f"no answer within {self.timeout_s}s"
        if isinstance(exc, openai.APIConnectionError):
            return "connection", f"cannot reach {self.base_url or 'the OpenAI API'}"
        if not isinstance(exc, openai.APIStatusError):
            return "bad_response", self._mask(exc.message)
        status = exc.status_code
        if status in (401, 403):
            return "auth", f"HTTP {status}: check the key in ${self.api_key_env}"
        said = exc.body.get("message") if isinstance(exc.body, dict) else None
        text = said if isinstance(said, str) and said else exc.message
        message = f"HTTP {status}: {self._mask(text)}"
        if status == 429:
            return "rate_limited", message
        if status >= 500 or status in (408, 409):
            return "server_error", message
        if exc.code in ERROR_KINDS:  # our server names the kind its backend reported
            return exc.code, message
        if status == 404:
            return "not_found", message
        if exc.code == "context_length_exceeded" or "context length" in text.lower():
            return "context_length", message
        return "bad_request", message

    def _mask(self, text: str) -> str:
        key = self._read_key()
        return text.replace(key, "***") if len(key) >= 8 else text


def _token_logprobs(given: Any, completion: bool) -> list[TokenLogprob]:
    """A choice's ``logprobs`` (chat: ``content`` entries; completions: parallel lists)."""
    if given is None:
        return []
    if completion:
        tokens = given.tokens or []
        values = given.token_logprobs or [0.0] * len(tokens)
        tops = given.top_logprobs or [{}] * len(tokens)
        return [
            TokenLogprob(token, float(value or 0.0), tuple((top or {}).items()))
            for token, value, top in zip(tokens, values, tops, strict=False)
        ]
    return [
        TokenLogprob(t.token, t.logprob, tuple((a.token, a.logprob) for a in t.top_logprobs or []))
        for t in given.content or []
    ]


def _plain(value: Any) -> Any:
    """Plain dicts and lists (JSON-ready) from mappings and sequences such as Hydra's configs."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _retry_after(exc: openai.APIError) -> float | None:
    """A server's ``Retry-After`` in seconds, when it gave a usable one."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not 0 <= seconds <= _MAX_RETRY_AFTER_S:
        return None
    return seconds
