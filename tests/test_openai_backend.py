"""OpenAIBackend against our real server over HTTP: concurrency, retries, errors, n, grammar, keys.

The server is ``websynthesis.server`` on 127.0.0.1 (an ephemeral port) with an
echo backend, so what the client sent can be read back from the answers; faults
come from the server's :class:`FaultInjector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from websynthesis.backends.openai_backend import OpenAIBackend
from websynthesis.backends.types import (
    Generation,
    GenerationRequest,
    Sampling,
    derive_seed,
    generate,
)
from websynthesis.faults import FaultInjector
from websynthesis.server import build_app, serve_in_background

KEY_ENV = "WS_TEST_OPENAI_KEY"
SECRET = "sk-test-S3CRET-do-not-leak-0123456789"
BASE = "base-model"


class EchoBackend:
    """Says what it was asked (model, content, seed, sample index); can cap n like some servers."""

    def __init__(self, delay_s: float = 0.0, max_n: int | None = None) -> None:
        self.delay_s = delay_s
        self.max_n = max_n

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        await asyncio.sleep(self.delay_s)
        return [self._answer(r) for r in requests]

    def _answer(self, r: GenerationRequest) -> Generation:
        s = r.sampling
        n = s.n if self.max_n is None else min(s.n, self.max_n)
        content = r.messages[-1]["content"]
        if content.startswith("error="):
            return Generation(texts=[], error=content.removeprefix("error="))
        texts = [f"{r.model}|{content}|{s.seed}|{i}" for i in range(n)]
        return Generation(
            texts, prompt_tokens=10, completion_tokens=2 * n, finish_reasons=["stop"] * n
        )

    def close(self) -> None:
        pass


@dataclass
class BodyRecorder:
    """ASGI wrapper that keeps the JSON body of every chat-completion request."""

    app: object
    bodies: list[dict] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(b"".join(chunks)))
            return message

        await self.app(scope, recording_receive, send)


@dataclass
class Server:
    url: str
    app: object
    faults: FaultInjector
    bodies: list[dict]
    clients: list[OpenAIBackend] = field(default_factory=list)

    def backend(self, **kwargs) -> OpenAIBackend:
        """A client of this server (closed with it)."""
        options = {
            "model": BASE,
            "base_url": f"{self.url}/v1",
            "api_key_env": KEY_ENV,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "timeout_s": 5.0,
            "max_retries": 3,
        }
        self.clients.append(OpenAIBackend(**(options | kwargs)))
        return self.clients[-1]

    @property
    def stats(self):
        return self.app.state.stats


@contextlib.contextmanager
def _server(backend: EchoBackend, **kwargs) -> Iterator[Server]:
    faults = FaultInjector()
    app = build_app(backend, [BASE, "policy"], faults=faults, **kwargs)
    recorder = BodyRecorder(app)
    with serve_in_background(recorder) as url:
        server = Server(url, app, faults, recorder.bodies)
        try:
            yield server
        finally:
            for client in server.clients:
                client.close()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with _server(EchoBackend(), auth_token=SECRET, batch_window_ms=2) as running:
        yield running


def _req(content: str, **sampling) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": content},), sampling=Sampling(**sampling)
    )


def test_concurrency_never_exceeds_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "EMPTY")
    with _server(EchoBackend(delay_s=0.05), batch_window_ms=5) as srv:
        backend = srv.backend(max_concurrency=8)
        requests = [_req(f"q{i}") for i in range(64)]
        results = generate(backend, requests)
        assert [g.texts for g in results] == [[f"None|q{i}|None|0"] for i in range(64)]
        assert srv.stats.requests == 64
        assert srv.stats.peak_in_flight == 8
        assert backend.stats.calls == 64 and backend.stats.retries == 0


def test_transient_faults_are_retried(server: Server) -> None:
    server.faults.fail(500, times=1, match="flaky")
    server.faults.fail(429, times=1, match="flaky", retry_after=0.0)
    server.faults.fail(503, times=1, match="flaky")
    backend = server.backend(max_retries=3)
    (result,) = generate(backend, [_req("flaky")])
    assert result.ok and result.texts == ["None|flaky|None|0"]
    assert backend.stats.retries == 3 and backend.stats.calls == 4
    assert server.stats.requests == 4


# What each transport fault of the chaos looks like to the client.
CHAOS_SEEN_AS = {
    "server_error": "server_error",
    "rate_limited": "rate_limited",
    "hang": "timeout",
    "truncated": "bad_response",
    "garbage": "bad_response",
}


def test_chaos_faults_are_retried_to_the_answers_without_them(server: Server) -> None:
    """Every transport fault of the chaos (500, 429, a hang past the timeout, a JSON body cut
    short, a proxy's HTML page) is retried, counted by kind, and leaves the answers as they
    were without faults."""
    asks = [_req(f"ask {i}", seed=i) for i in range(24)]
    expected = generate(server.backend(), asks)
    server.faults.chaos(0.5, seed=3, hang_s=3.0)
    backend = server.backend(max_retries=20, timeout_s=1.0)
    assert [r.texts for r in generate(backend, asks)] == [r.texts for r in expected]
    injected = server.faults.injected
    assert set(injected) == set(CHAOS_SEEN_AS), injected  # 24+ draws at 0.5: all five kinds
    seen: Counter[str] = Counter()
    for kind, count in injected.items():
        seen[CHAOS_SEEN_AS[kind]] += count
    assert backend.stats.retried == seen and backend.stats.retries == injected.total()
    assert not backend.stats.errors


def test_an_unreadable_body_that_persists_is_a_typed_error(server: Server) -> None:
    server.faults.chaos(1.0, kinds=["garbage"])
    (result,) = generate(server.backend(max_retries=2), [_req("hello")])
    assert not result.ok and result.error.startswith("bad_response: not a completion")


def test_malformed_answers_are_the_same_junk_for_the_same_request(server: Server) -> None:
    asks = [_req(f"ask {i}", seed=i) for i in range(40)]
    clean = generate(server.backend(), asks)
    server.faults.malform(0.5, seed=1)
    first, again = generate(server.backend(), asks), generate(server.backend(), asks)
    assert [r.texts for r in first] == [r.texts for r in again]  # a property of the input
    changed = sum(a.texts != b.texts for a, b in zip(first, clean, strict=True))
    assert 8 <= changed <= 32 and server.faults.injected["malformed"] == 80 - 2 * (40 - changed)
    assert all(r.ok for r in first)  # junk is the model's answer, not a transport failure


def test_timeouts_are_retried(server: Server) -> None:
    server.faults.hang(3.0, times=1, match="slow")
    backend = server.backend(timeout_s=1.0)  # generous: a loaded machine must not time out twice
    (result,) = generate(backend, [_req("slow")])
    assert result.ok and backend.stats.retries == 1


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(("fail", 503), "server_error"), (("fail", 429), "rate_limited"), (("hang", 3.0), "timeout")],
)
def test_persistent_fault_is_a_typed_error_for_that_request_only(
    server: Server, fault: tuple[str, float], kind: str
) -> None:
    how, value = fault
    if how == "fail":
        server.faults.fail(int(value), times=None, match="doomed")
    else:
        server.faults.hang(value, times=None, match="doomed")
    # The timeout only matters for the hang; it is generous so that, on a loaded CI machine,
    # the healthy requests never time out (their retries would count too).
    backend = server.backend(max_retries=2, timeout_s=1.0 if how == "hang" else 30.0)
    batch = [_req("a"), _req("doomed"), _req("b", n=2), _req("c")]
    results = generate(backend, batch)
    assert [g.ok for g in results] == [True, False, True, True]
    assert results[1].error.startswith(f"{kind}: ") and results[1].texts == []
    assert results[2].texts == ["None|b|None|0", "None|b|None|1"]
    assert backend.stats.retries == 2 and dict(backend.stats.errors) == {kind: 1}


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "bad grammar", "bad_request"),
        (400, "This model's maximum context length is 32768 tokens", "context_length"),
        (422, "unprocessable", "bad_request"),
    ],
)
def test_client_errors_are_not_retried(
    server: Server, status: int, message: str, kind: str
) -> None:
    server.faults.fail(status, times=None, match="bad", message=message)
    backend = server.backend(max_retries=3)
    (bad, good) = generate(backend, [_req("bad"), _req("good")])
    assert bad.error == f"{kind}: HTTP {status}: {message}" and good.ok
    assert backend.stats.retries == 0 and server.stats.requests == 2


@pytest.mark.parametrize(
    ("error", "kind", "retries"),
    [
        ("context_length: 5000 > 4096", "context_length", 0),
        ("grammar_unsupported: no", "grammar_unsupported", 0),
        ("bad_request: grammar does not compile", "bad_request", 0),
        ("internal: out of memory", "server_error", 2),
    ],
)
def test_backend_error_kinds_cross_the_server(
    server: Server, error: str, kind: str, retries: int
) -> None:
    backend = server.backend(max_retries=2)
    (result,) = generate(backend, [_req(f"error={error}")])
    assert result.error.startswith(f"{kind}: ") and error in result.error
    assert backend.stats.retries == retries


def test_unknown_model_is_not_found_and_not_retried(server: Server) -> None:
    backend = server.backend()
    request = GenerationRequest(messages=({"role": "user", "content": "x"},), model="ghost")
    (result,) = generate(backend, [request])
    assert result.error.startswith("not_found: HTTP 404")
    assert backend.stats.retries == 0


def test_connection_errors_are_typed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(
        BASE, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_base_s=0.01
    )
    (result,) = generate(backend, [_req("x")])
    backend.close()
    assert result.error.startswith("connection: ") and backend.stats.retries == 1


def test_adapter_names_seed_and_sampling_pass_through(server: Server) -> None:
    backend = server.backend()
    request = GenerationRequest(
        messages=({"role": "user", "content": "p"},),
        sampling=Sampling(temperature=0.7, top_p=0.9, max_new_tokens=17, n=2, seed=42),
        model="policy",
    )
    (result,) = generate(backend, [request])
    assert result.texts == ["policy|p|42|0", "policy|p|42|1"]
    assert (result.prompt_tokens, result.completion_tokens) == (10, 4)
    assert result.finish_reasons == ["stop", "stop"]
    body = server.bodies[-1]
    assert (body["model"], body["temperature"], body["top_p"]) == ("policy", 0.7, 0.9)
    assert (body["max_tokens"], body["n"], body["seed"]) == (17, 2, 42)
    generate(backend, [_req("base")])
    assert server.bodies[-1]["model"] == BASE and "seed" not in server.bodies[-1]


def test_extra_body_from_a_hydra_config_is_sent(server: Server) -> None:
    # values our server takes as neutral (it refuses the fields it cannot honour by name)
    extra = OmegaConf.create({"top_k": -1, "metadata": {"run": {"stage": "explore"}}})
    backend = server.backend(extra_body=extra)
    assert generate(backend, [_req("x")])[0].ok
    body = server.bodies[-1]
    assert body["top_k"] == -1 and body["metadata"] == {"run": {"stage": "explore"}}
    refused = server.backend(extra_body=OmegaConf.create({"chat_template_kwargs": {"a": 1}}))
    result = generate(refused, [_req("x")])[0]
    assert result.error.startswith("bad_request: ") and "chat_template_kwargs" in result.error


@pytest.mark.parametrize("cap_where", ["client", "server"])
def test_n_is_split_when_the_server_caps_it(monkeypatch, cap_where: str) -> None:
    monkeypatch.setenv(KEY_ENV, "EMPTY")
    server_cap = 2 if cap_where == "server" else None
    with _server(EchoBackend(max_n=server_cap)) as srv:
        backend = srv.backend(max_n_per_call=2 if cap_where == "client" else None)
        (result,) = generate(backend, [_req("many", temperature=1.0, seed=3, n=5)])
    seeds = [3, derive_seed(3, 2), derive_seed(3, 4)]
    assert [(b["n"], b["seed"]) for b in srv.bodies] == list(
        zip([5, 3, 1] if cap_where == "server" else [2, 2, 1], seeds, strict=True)
    )
    assert result.texts == [
        f"None|many|{seed}|{i}" for seed, k in zip(seeds, [2, 2, 1], strict=True) for i in range(k)
    ]
    assert len(set(result.texts)) == 5
    assert (result.prompt_tokens, result.completion_tokens) == (30, 10)  # what was billed


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("websynthesis", {"grammar": "G"}),
        ("vllm", {"structured_outputs": {"grammar": "G"}}),
        ("vllm_legacy", {"guided_grammar": "G"}),
        ("sglang", {"ebnf": "G"}),
    ],
)
def test_grammar_dialects(server: Server, mode: str, expected: dict) -> None:
    backend = server.backend(grammar_mode=mode)
    (result,) = generate(
        backend, [GenerationRequest(messages=({"role": "user", "content": "g"},), grammar="G")]
    )
    assert result.ok
    body = server.bodies[-1]
    assert {k: body[k] for k in expected} == expected


def test_grammar_without_support_is_an_error_or_ignored(server: Server) -> None:
    request = GenerationRequest(messages=({"role": "user", "content": "g"},), grammar="G")
    strict = server.backend(grammar_mode="none")
    (result,) = generate(strict, [request])
    assert result.error == "grammar_unsupported: grammar not supported by this backend"
    assert server.bodies == []  # never sent unconstrained
    lenient = server.backend(grammar_mode="none", on_unsupported_grammar="ignore")
    (result,) = generate(lenient, [request])
    assert result.ok and "grammar" not in server.bodies[-1]


def test_api_key_never_leaks(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.faults.fail(500, times=1, match="retry me")
    cfg = OmegaConf.create(
        {
            "_target_": "websynthesis.backends.openai_backend.OpenAIBackend",
            "model": BASE,
            "base_url": f"{server.url}/v1",
            "api_key_env": KEY_ENV,
            "backoff_base_s": 0.01,
        }
    )
    backend = instantiate(cfg)  # as a Hydra job builds it
    server.clients.append(backend)
    logging.getLogger("test").info("config:\n%s", OmegaConf.to_yaml(cfg))
    results = generate(backend, [_req("retry me"), _req("fine")])
    assert all(g.ok for g in results)  # the server accepted the key from the environment
    assert SECRET not in repr(backend) and SECRET not in str(backend)
    assert all(SECRET not in repr(v) for v in vars(backend).values() if v is not backend._state)
    assert backend.api_key_env == KEY_ENV
    assert "Retry" in caplog.text or "retry" in caplog.text
    assert SECRET not in caplog.text

    server.faults.fail(401, times=1, message=f"Incorrect API key provided: {SECRET}")
    (denied,) = generate(backend, [_req("x")])
    assert denied.error.startswith("auth: ") and SECRET not in denied.error
    assert backend.stats.retries == 1  # 401 was not retried


def test_wrong_key_is_an_auth_error(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "not-the-token")
    backend = server.backend()
    (result,) = generate(backend, [_req("x")])
    assert result.error == f"auth: HTTP 401: check the key in ${KEY_ENV}"
    assert backend.stats.retries == 0


def test_openai_api_without_a_key_fails_at_construction(monkeypatch) -> None:
    monkeypatch.delenv("WS_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="WS_TEST_ABSENT_KEY"):
        OpenAIBackend("gpt-4o-mini", api_key_env="WS_TEST_ABSENT_KEY")


def test_one_backend_serves_several_event_loops(server: Server) -> None:
    backend = server.backend()
    assert generate(backend, [_req("one")])[0].ok
    assert generate(backend, [_req("two")])[0].ok  # another asyncio.run, the same client
    backend.close()
    assert not any(t.name == "openai-backend" and t.is_alive() for t in threading.enumerate())
    assert generate(backend, [_req("three")])[0].ok  # usable again after close
