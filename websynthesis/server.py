"""An OpenAI-compatible HTTP server over any :class:`Backend` (the local one in practice).

``python serve.py model=tiny port=8000`` (the entry point at the root) serves the base model and
each configured LoRA adapter as model names on ``POST /v1/chat/completions``
and ``GET /v1/models``, so anything that speaks the OpenAI API (our
:class:`~websynthesis.backends.openai_backend.OpenAIBackend` with
``grammar_mode=websynthesis``, other tools, several synthesis workers at once)
can share one loaded model.

Requests that arrive together are answered together: the project's one batcher
(:class:`~websynthesis.backends.batching.BatchingBackend`, with a window) gathers requests
for up to ``batch_window_ms`` after the first one, or until ``max_batch_size`` are waiting,
and sends them to the backend as one ``agenerate`` batch. One batch runs at a time (a local
model is one device); requests that arrive meanwhile form the next batch. Each request is
generated for its own client (no dedup), so each is billed its own tokens.

``POST /v1/completions`` continues raw prompts. What each endpoint takes and answers
(sampling, ``stop``, logprobs, streaming, list-form content, the structured-output fields
of OpenAI, vLLM and SGLang, our own ``grammar``: an EBNF string the whole answer must
match) is :mod:`websynthesis.openai_api`'s: a field the server does not honour is a 400
naming it, never a 200 made under other rules. The server binds loopback by default; a bearer token
is required when ``auth_token_env`` names an environment variable holding one.
:class:`~websynthesis.faults.FaultInjector` lets tests and the chaos soak make requests fail,
hang, break their bodies or answer junk; it can only be passed to :func:`build_app`, never
switched on from the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from websynthesis.backends.batching import BatchingBackend
from websynthesis.backends.structured_outputs import StructuredOutputError, request_grammar
from websynthesis.backends.types import Backend, GenerationRequest, Sampling
from websynthesis.counters import Counters
from websynthesis.faults import FaultInjector, broken_body
from websynthesis.openai_api import Answer, ChatCompletionRequest, CompletionRequest, unsupported

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Error kinds of a backend's Generation.error that are the request's own fault.
_STATUS_BY_KIND = {
    "bad_request": 400,
    "context_length": 400,
    "grammar_unsupported": 400,
    "not_found": 404,
}
# Module level: with postponed annotations FastAPI resolves dependencies from globals.
_BEARER = HTTPBearer(auto_error=False)


@dataclass
class ServerStats(Counters):
    """Requests answered and in flight (now and at most); how they were batched is the
    batcher's (``app.state.batcher.stats``)."""

    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, which the ``openai`` client turns into its exceptions;
    ``param`` names the request field at fault."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _ApiError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def build_app(
    backend: Backend,
    model_names: Sequence[str],
    auth_token: str | None = None,
    batch_window_ms: float = 10.0,
    max_batch_size: int = 64,
    faults: FaultInjector | None = None,
) -> FastAPI:
    """The FastAPI app; ``model_names[0]`` is the base model, the rest are adapter names.

    Requests for the base model reach the backend with ``model=None``, those for
    an adapter with ``model=<adapter name>``. ``faults`` is for tests only.
    """
    if not model_names:
        raise ValueError("model_names needs at least the base model's name")
    base, served = model_names[0], set(model_names)
    stats = ServerStats()

    app = FastAPI(title="websynthesis")
    app.state.stats = stats
    app.state.batcher = BatchingBackend(
        backend,
        max_batch_size=max_batch_size,
        window_s=batch_window_ms / 1000,
        dedup=False,
        # One batch at a time for a backend that decodes a call to its end; as many as come
        # for one that batches continuously (LocalBackend(continuous=True)).
        max_concurrent=int(getattr(backend, "concurrent_batches", 1)),
        stream=int(getattr(backend, "concurrent_batches", 1)) > 1,
    )

    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if auth_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), auth_token.encode()):
            raise _ApiError(
                _error(
                    401,
                    "missing or invalid bearer token",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
            )

    @app.exception_handler(_ApiError)
    async def _api_error(_: Request, exc: _ApiError) -> JSONResponse:
        return exc.response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, details or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "websynthesis"}
            for name in model_names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        messages = tuple(m.plain() for m in body.messages)
        max_new = body.max_completion_tokens or body.max_tokens or Sampling().max_new_tokens
        return await _answer(body, [{"messages": messages}], max_new, messages[-1]["content"])

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        prompts = body.prompts()
        asks = [{"messages": (), "prompt": prompt} for prompt in prompts]
        return await _answer(body, asks, body.max_tokens, prompts[-1] if prompts else "")

    async def _answer(
        body: ChatCompletionRequest | CompletionRequest,
        asks: list[dict[str, Any]],
        max_new: int,
        last: str,
    ) -> Any:
        stats.requests += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            answer = await _complete(body, asks, max_new, last)
        finally:
            stats.in_flight -= 1
        if isinstance(answer, Response):
            return answer
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(answer.events(usage), media_type="text/event-stream")
        return answer.body()

    async def _complete(
        body: ChatCompletionRequest | CompletionRequest,
        asks: list[dict[str, Any]],
        max_new: int,
        last: str,
    ) -> Answer | Response:
        refused = unsupported(body)
        if refused is not None:
            return _error(400, refused[1], param=refused[0], code="unsupported")
        if body.model not in served:
            message = f"model {body.model!r} is not served here"
            return _error(404, message, param="model", code="model_not_found")
        try:
            grammar = request_grammar(body.constraint_fields())
        except StructuredOutputError as error:
            return _error(400, str(error), param=error.field, code="unsupported")
        fault = faults.take(last) if faults is not None else None
        if fault is not None and fault.status is not None:
            headers = None
            if fault.retry_after is not None:
                headers = {"Retry-After": str(fault.retry_after)}
            return _error(fault.status, fault.message, "server_error", headers=headers)
        if fault is not None:
            await asyncio.sleep(fault.hang_s)
        sampling = Sampling(
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=max_new,
            n=body.n,
            seed=body.seed,
            logprobs=body.wanted_logprobs(),
        )
        model = None if body.model == base else body.model
        requests = [
            GenerationRequest(sampling=sampling, model=model, grammar=grammar, **ask)
            for ask in asks
        ]
        generations = await app.state.batcher.agenerate(requests)  # failures come as errors
        for generation in generations:
            if not generation.ok:
                return _generation_error(generation.error or "internal: generation failed")
            if sampling.logprobs is not None and generation.logprobs is None:
                message = "logprobs: this server's backend does not return them"
                return _error(400, message, param="logprobs", code="unsupported")
        if faults is not None:
            asked = {"model": body.model, "asks": asks, "sampling": asdict(sampling)}
            generations = [
                replace(generation, texts=junk)
                if (junk := faults.malformed(asked, generation.texts)) is not None
                else generation
                for generation in generations
            ]
        chat = isinstance(body, ChatCompletionRequest)
        answer = Answer(chat, body.model, generations, body.stops())
        if fault is not None and fault.body is not None and not body.stream:
            content, media = broken_body(fault.body, JSONResponse(answer.body()).body)
            return Response(content, media_type=media)
        return answer

    return app


def _generation_error(error: str) -> JSONResponse:
    """A backend's ``"<kind>: <message>"`` as an HTTP error; ``code`` carries the kind.

    The request's own faults are 4xx, which clients do not retry; anything else
    (``internal``: out of memory, a kernel error) is a 500, which they may.
    """
    kind = error.partition(":")[0].strip()
    status = _STATUS_BY_KIND.get(kind, 500)
    return _error(status, error, "invalid_request_error" if status < 500 else "server_error", kind)


def run_server(
    backend: Backend,
    model_names: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    auth_token: str | None = None,
    batch_window_ms: float = 10.0,
    max_batch_size: int = 64,
) -> None:
    """Serve until interrupted, then close the backend."""
    if host not in _LOOPBACK and auth_token is None:
        log.warning("serving on %s without a bearer token: anyone reaching it may use it", host)
    app = build_app(backend, model_names, auth_token, batch_window_ms, max_batch_size)
    try:
        uvicorn.run(app, host=host, port=port)
    finally:
        stats: ServerStats = app.state.stats
        batches = app.state.batcher.stats.batches
        log.info("served %d requests in %d batches", stats.requests, batches)
        backend.close()


@contextlib.contextmanager
def serve_in_background(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread; yields its base URL (``port=0``: any free one).

    For tests and for a job that serves its own in-process model to
    OpenAI-compatible clients. Requests still running at exit get a few seconds.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
