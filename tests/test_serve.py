"""The OpenAI-compatible server: protocol, auth, micro-batching, faults, Hydra wiring.

Every test talks HTTP to a real uvicorn server on 127.0.0.1 (an ephemeral port).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import httpx2
import openai
import pytest
from hydra import compose, initialize_config_dir

from websynthesis import server
from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.config import register_configs
from websynthesis.faults import FaultInjector
from websynthesis.server import build_app, serve_in_background

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
TOKEN = "test-bearer-token-0123456789"
MODELS = ["base-model", "policy", "world_model"]


class EchoBackend:
    """Answers with what it was asked, and records every batch it gets."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[GenerationRequest]] = []

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.batches.append(list(requests))
        if any(_last(r) == "explode" for r in requests):
            raise RuntimeError("the whole batch failed")
        await asyncio.sleep(self.delay_s)
        return [self._answer(r) for r in requests]

    @staticmethod
    def _answer(r: GenerationRequest) -> Generation:
        content = _last(r)
        if content.startswith("error="):
            return Generation(texts=[], error=content.removeprefix("error="))
        s = r.sampling
        texts = [f"{r.model}|{content}|{s.seed}|{i}" for i in range(s.n)]
        reason = "length" if s.max_new_tokens < 5 else "stop"
        return Generation(
            texts=texts,
            prompt_tokens=len(content),
            completion_tokens=3 * s.n,
            finish_reasons=[reason] * s.n,
        )

    def close(self) -> None:
        pass


def _last(request: GenerationRequest) -> str:
    """A completion request's prompt, or a chat request's last message."""
    return request.prompt if request.prompt is not None else request.messages[-1]["content"]


@contextlib.contextmanager
def running(backend: EchoBackend, **kwargs) -> Iterator[tuple[str, object]]:
    app = build_app(backend, MODELS, **kwargs)
    with serve_in_background(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, EchoBackend, object]]:
    backend = EchoBackend()
    with running(backend, auth_token=TOKEN, batch_window_ms=5) as (url, app):
        yield url, backend, app


def _client(url: str, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10)


def _post(url: str, body: dict, token: str | None = TOKEN) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx2.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_models_lists_base_and_adapters(echo_server) -> None:
    url, _, _ = echo_server
    with _client(url) as client:
        assert [m.id for m in client.models.list()] == MODELS


def test_bearer_token_is_required(echo_server, caplog: pytest.LogCaptureFixture) -> None:
    url, _, _ = echo_server
    caplog.set_level(logging.DEBUG)
    body = {"model": "base-model", "messages": [{"role": "user", "content": "hi"}]}
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        response = _post(url, body, token)
        assert response.status_code == 401, token
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"
    basic = {"Authorization": f"Basic {TOKEN}"}
    response = httpx2.post(f"{url}/v1/chat/completions", json=body, headers=basic, timeout=10)
    assert response.status_code == 401
    assert httpx2.get(f"{url}/v1/models", timeout=10).status_code == 401
    with _client(url, key="wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert _post(url, body).status_code == 200
    assert httpx2.get(f"{url}/health", timeout=10).status_code == 200
    assert TOKEN not in caplog.text


def test_chat_completion_round_trip(echo_server) -> None:
    url, backend, _ = echo_server
    with _client(url) as client:
        _round_trip(client, backend)


def _round_trip(client: openai.OpenAI, backend: EchoBackend) -> None:
    base = client.chat.completions.create(
        model="base-model",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}],
        temperature=0.7,
        top_p=0.9,
        max_tokens=32,
        n=3,
        seed=11,
        extra_body={"grammar": "root ::= 'x'"},
    )
    assert [c.message.content for c in base.choices] == [f"None|hello|11|{i}" for i in range(3)]
    assert [c.index for c in base.choices] == [0, 1, 2]
    assert {c.finish_reason for c in base.choices} == {"stop"}
    assert (base.usage.prompt_tokens, base.usage.completion_tokens) == (5, 9)
    assert base.usage.total_tokens == 14 and base.model == "base-model"
    request = backend.batches[-1][0]
    assert request.model is None and request.grammar == "root ::= 'x'"
    assert request.messages[0] == {"role": "system", "content": "sys"}
    s = request.sampling
    assert (s.temperature, s.top_p, s.max_new_tokens, s.n, s.seed) == (0.7, 0.9, 32, 3, 11)

    adapter = client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": "go"}], max_completion_tokens=4
    )
    assert adapter.choices[0].message.content == "policy|go|None|0"
    assert adapter.choices[0].finish_reason == "length"
    assert backend.batches[-1][0].sampling.max_new_tokens == 4


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "base-model"}, 400),
        ({"model": "base-model", "messages": []}, 400),
        ({"model": "base-model", "messages": [{"role": "tool", "content": "x"}]}, 400),
        ({"model": "base-model", "messages": [{"role": "user", "content": "x"}], "n": 0}, 400),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
        ({"model": "policy", "messages": [{"role": "user", "content": "x"}], "bogus": 1}, 400),
    ],
)
def test_bad_requests_get_openai_errors(echo_server, body: dict, status: int) -> None:
    url, _, _ = echo_server
    response = _post(url, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("grammar_unsupported: no grammar here", 400),
        ("context_length: 5000 > 4096", 400),
        ("not_found: unknown adapter", 404),
        ("internal: CUDA out of memory", 500),
        ("something odd", 500),
    ],
)
def test_backend_errors_reach_the_client(echo_server, error: str, status: int) -> None:
    url, _, _ = echo_server
    body = {"model": "base-model", "messages": [{"role": "user", "content": f"error={error}"}]}
    response = _post(url, body)
    assert response.status_code == status
    assert response.json()["error"]["message"] == error
    assert response.json()["error"]["code"] == error.partition(":")[0]


def test_a_failed_batch_fails_its_requests_only(echo_server) -> None:
    url, _, _ = echo_server
    explode = {"model": "base-model", "messages": [{"role": "user", "content": "explode"}]}
    assert _post(url, explode).status_code == 500
    ok = _post(url, {"model": "base-model", "messages": [{"role": "user", "content": "after"}]})
    assert ok.status_code == 200  # the batcher survives


async def _concurrent(url: str, contents: list[str]) -> list[str]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0) as client:
        responses = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="policy", messages=[{"role": "user", "content": c}], max_tokens=8
                )
                for c in contents
            )
        )
    return [r.choices[0].message.content for r in responses]


def test_the_server_batches_concurrent_requests_as_one() -> None:
    backend = EchoBackend()
    # a long window: the batch leaves when max_batch_size requests are waiting
    with running(backend, batch_window_ms=2000, max_batch_size=8) as (url, app):
        contents = [f"q{i}" for i in range(8)]
        assert asyncio.run(_concurrent(url, contents)) == [f"policy|{c}|None|0" for c in contents]
        assert len(backend.batches) == 1
        assert sorted(r.messages[-1]["content"] for r in backend.batches[0]) == contents
        assert app.state.batcher.stats.batches == 1 and app.state.batcher.stats.largest_batch == 8


def test_the_server_batches_respect_max_batch_size_and_window() -> None:
    backend = EchoBackend(delay_s=0.05)
    with running(backend, batch_window_ms=50, max_batch_size=4) as (url, app):
        contents = [f"q{i}" for i in range(10)]
        assert len(asyncio.run(_concurrent(url, contents))) == 10
        sizes = [len(batch) for batch in backend.batches]
        assert max(sizes) <= 4 and sum(sizes) == 10 and app.state.batcher.stats.sent == 10
        assert all(len(batch) <= 4 for batch in backend.batches)


def test_fault_injector_fails_then_recovers() -> None:
    faults = FaultInjector()
    faults.fail(503, times=2, match="flaky", retry_after=0.0)
    faults.hang(0.3, times=1, match="slow")
    with running(EchoBackend(), faults=faults) as (url, _):
        flaky = {"model": "base-model", "messages": [{"role": "user", "content": "flaky"}]}
        other = {"model": "base-model", "messages": [{"role": "user", "content": "other"}]}
        assert _post(url, flaky).status_code == 503
        assert _post(url, other).status_code == 200  # not matched
        second = _post(url, flaky)
        assert second.status_code == 503 and second.headers["retry-after"] == "0.0"
        assert _post(url, flaky).status_code == 200
        slow = {"model": "base-model", "messages": [{"role": "user", "content": "slow"}]}
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(f"{url}/v1/chat/completions", json=slow, timeout=0.1)
        assert _post(url, slow).status_code == 200


def test_faults_are_off_unless_build_app_gets_them() -> None:
    # run_server (what the Hydra main calls) has no way to pass faults
    assert "faults" not in server.run_server.__code__.co_varnames


def _serve_entry() -> ModuleType:
    """The root ``serve.py`` (an entry point, not part of the package)."""
    spec = importlib.util.spec_from_file_location("serve_entry", REPO / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hydra_main_reads_the_serve_config(monkeypatch: pytest.MonkeyPatch) -> None:
    serve = _serve_entry()
    register_configs()
    monkeypatch.setenv("WS_TEST_SERVE_TOKEN", TOKEN)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="serve",
            overrides=[
                "port=9123",
                "host=127.0.0.1",
                "auth_token_env=WS_TEST_SERVE_TOKEN",
                "batch_window_ms=7",
                "max_batch_size=3",
                "model.adapters.policy=/ckpt/policy",
            ],
        )
    built: list[tuple[object, dict]] = []
    calls: list[tuple[tuple, dict]] = []

    def build_stack(model: object, **options: object) -> SimpleNamespace:
        built.append((model, options))
        return SimpleNamespace(backend="BACKEND")

    monkeypatch.setattr(serve, "build_stack", build_stack)
    monkeypatch.setattr(serve, "run_server", lambda *a, **k: calls.append((a, k)))
    serve.main(cfg)
    assert built == [(cfg.model, {"batch": False})]  # the server batches in its own window
    ((args, kwargs),) = calls
    assert args == ("BACKEND", [cfg.model.name, "policy"])
    assert kwargs == {
        "host": "127.0.0.1",
        "port": 9123,
        "auth_token": TOKEN,
        "batch_window_ms": 7,
        "max_batch_size": 3,
    }
    monkeypatch.delenv("WS_TEST_SERVE_TOKEN")
    with pytest.raises(SystemExit, match="WS_TEST_SERVE_TOKEN"):
        serve.main(cfg)


# --- end to end through the real local backend and the tiny model ---------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path: Path) -> Path:
    """The tiny model in the session cache, where ``model=tiny`` finds it."""
    return tiny_model_path


@pytest.fixture(scope="module")
def tiny_local(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny Qwen2 model with one random (non-zero) LoRA adapter named ``policy``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from websynthesis.backends.local import LocalBackend

    path = tiny_model
    adapter = tmp_path_factory.mktemp("policy")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(path), config).save_pretrained(adapter)
    backend = LocalBackend(str(path), adapters={"policy": str(adapter)}, device="cpu")
    yield backend
    backend.close()


@pytest.mark.slow
def test_http_answers_equal_the_local_backend(tiny_local) -> None:
    from websynthesis.backends.openai_backend import OpenAIBackend
    from websynthesis.backends.types import Sampling, generate

    def ask(content: str, **kwargs) -> GenerationRequest:
        sampling = Sampling(**kwargs.pop("sampling", {"max_new_tokens": 10}))
        messages = ({"role": "user", "content": content},)
        return GenerationRequest(messages=messages, sampling=sampling, **kwargs)

    requests = [
        ask("Hello there"),
        ask("Hello there", model="policy"),
        ask(
            "Sample",
            sampling={"temperature": 1.0, "top_p": 0.9, "seed": 7, "n": 4, "max_new_tokens": 10},
        ),
        ask("Yes or no?", grammar='root ::= "yes" | "no"'),
    ]
    # a long window: the 8 concurrent requests leave as one full batch, however slow the
    # machine is to send them (a full batch does not wait the window out)
    app = build_app(tiny_local, ["tiny", "policy"], batch_window_ms=2000, max_batch_size=8)
    with serve_in_background(app) as url:
        # max_n_per_call=2: the seeded n=4 goes as two calls; derived seeds keep it exact
        client = OpenAIBackend(
            "tiny", f"{url}/v1", api_key_env=None, grammar_mode="websynthesis", max_n_per_call=2
        )
        try:
            with openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY") as raw:
                assert [m.id for m in raw.models.list()] == ["tiny", "policy"]
            via_http = generate(client, requests)
            calls_before = tiny_local.stats.generate_calls
            batched = generate(client, [ask(f"q{i}") for i in range(8)])
        finally:
            client.close()
    assert all(g.ok for g in via_http + batched), [g.error for g in via_http + batched]
    assert tiny_local.stats.generate_calls == calls_before + 1  # 8 HTTP requests, one generate

    direct = generate(tiny_local, requests)
    assert [g.texts for g in via_http] == [g.texts for g in direct]
    assert [g.finish_reasons for g in via_http] == [g.finish_reasons for g in direct]
    assert [g.completion_tokens for g in via_http] == [g.completion_tokens for g in direct]
    assert via_http[2].prompt_tokens == 2 * direct[2].prompt_tokens  # billed once per call
    assert via_http[3].texts[0] in ("yes", "no")
    assert len(set(via_http[2].texts)) > 1


@pytest.mark.slow
def test_python_dash_m_serve_runs_the_hydra_app(tmp_path: Path, tiny_model: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"WS_TEST_SERVE_TOKEN": TOKEN}
    command = [sys.executable, "serve.py", "model=tiny", f"port={port}"]
    command += ["auth_token_env=WS_TEST_SERVE_TOKEN", f"hydra.run.dir={tmp_path}"]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(command, cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not come up"
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        assert httpx2.get(f"{url}/v1/models", timeout=5).status_code == 401
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        response = _post(url, body)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert TOKEN not in stderr
