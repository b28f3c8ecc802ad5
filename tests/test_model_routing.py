"""One backend per role (websynthesis/backends/routing.py): routing, the check at start, the
cache's view of it, and a run whose role never answered ending non-zero."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_entry_points import run_entry  # tests/ is on sys.path

from websynthesis.backends.cache import CachedBackend
from websynthesis.backends.routing import RoleRouter, check_constraints, routed_backend
from websynthesis.backends.types import Generation, GenerationRequest, Sampling, generate
from websynthesis.roles.client import OutcomeStats, RolesFailed


class Recorder:
    """Answers ``<name>:<content>`` and records the roles of what it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[str] = []
        self.closed = False

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.asked += [r.role for r in requests]
        await asyncio.sleep(0)
        return [Generation(texts=[f"{self.name}:{r.messages[-1]['content']}"]) for r in requests]

    @property
    def cache_identity(self) -> dict[str, str]:
        return {"kind": "recorder", "name": self.name}

    def close(self) -> None:
        self.closed = True


def ask(role: str, content: str) -> GenerationRequest:
    return GenerationRequest(messages=({"role": "user", "content": content},), role=role)


def test_each_request_goes_to_its_roles_backend_answers_in_order() -> None:
    local, remote = Recorder("local"), Recorder("remote")
    router = RoleRouter(local, {"world_model": remote})
    roles = ["policy", "world_model", "policy", "reward", "world_model"]
    answers = generate(router, [ask(role, str(i)) for i, role in enumerate(roles)])
    assert [a.texts[0] for a in answers] == [
        "local:0", "remote:1", "local:2", "local:3", "remote:4",
    ]  # fmt: skip
    assert remote.asked == ["world_model", "world_model"]
    assert local.asked == ["policy", "policy", "reward"]
    router.close()
    assert local.closed and remote.closed


def test_the_cache_keys_on_every_roles_server(tmp_path: Path) -> None:
    first = RoleRouter(Recorder("local"), {"world_model": Recorder("remote-a")})
    moved = RoleRouter(Recorder("local"), {"world_model": Recorder("remote-b")})
    assert first.cache_identity != moved.cache_identity
    cached = CachedBackend(first, tmp_path / "a.sqlite")
    assert generate(cached, [ask("world_model", "x")])[0].texts == ["remote-a:x"]
    again = CachedBackend(moved, tmp_path / "a.sqlite")
    assert generate(again, [ask("world_model", "x")])[0].texts == ["remote-b:x"]  # not cached

    class Anonymous(Recorder):
        cache_identity = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="cache_identity"):
        CachedBackend(RoleRouter(Recorder("local"), {"judge": Anonymous("x")}), tmp_path / "b")


def test_a_constrained_role_on_a_server_without_grammars_fails_at_start(
    tiny_model_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-routing-0123456789")
    on_api = ["+backend@model.role_backends.judge=openai"]
    with pytest.raises(ValueError, match=r"role 'judge'.*model.role_backends.judge.grammar_mode"):
        routed_backend(tiny_model_config(*on_api))
    backend = routed_backend(tiny_model_config(*on_api, "model.roles.judge.constrained=false"))
    try:
        assert isinstance(backend, RoleRouter)
        assert type(backend.backend_for("judge")).__name__ == "OpenAIBackend"
        assert type(backend.backend_for("policy")).__name__ == "LocalBackend"
    finally:
        backend.close()
    from websynthesis.backends.openai_backend import OpenAIBackend

    whole = OpenAIBackend("tiny", "http://127.0.0.1:9/v1", grammar_mode="none")
    roles = tiny_model_config().roles
    with pytest.raises(ValueError, match=r"role 'policy'.*model.backend.grammar_mode"):
        check_constraints(roles, whole)
    with pytest.raises(ValueError, match="not roles"):
        routed_backend(tiny_model_config("+backend@model.role_backends.critic=openai"))


def test_check_constraints_lets_an_explicit_ignore_through() -> None:
    from websynthesis.backends.openai_backend import OpenAIBackend

    roles = {"reward": {"constrained": True}, "policy": {"constrained": False}}
    ignoring = OpenAIBackend("m", "http://127.0.0.1:9/v1", on_unsupported_grammar="ignore")
    check_constraints(roles, RoleRouter(Recorder("local"), {"reward": ignoring}))
    refusing = OpenAIBackend("m", "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="role 'reward'"):
        check_constraints(roles, RoleRouter(Recorder("local"), {"reward": refusing}))
    check_constraints(roles, RoleRouter(Recorder("local"), {"policy": refusing}))


def test_failed_roles_are_those_whose_every_attempt_failed_in_the_backend() -> None:
    stats = OutcomeStats()
    stats.role("policy").attempts.update({"ok": 3, "backend_error": 1})
    stats.role("world_model").attempts.update({"backend_error": 4})
    stats.role("world_model").reasons.update({"backend_error/connection": 4})
    stats.role("reward").attempts.update({"invalid_score": 2})  # bad output, not a dead server
    assert stats.failed_roles() == {"world_model": {"connection": 4}}
    with pytest.raises(RolesFailed, match=r"world_model \(4 calls: connection 4\)"):
        stats.require_answers()
    OutcomeStats().require_answers()  # nothing asked: nothing failed


@pytest.mark.slow
def test_a_role_on_our_server_answers_as_the_local_model_does(tiny_model_config) -> None:
    from websynthesis.server import build_app, serve_in_background

    local_cfg = tiny_model_config()
    local = routed_backend(local_cfg)
    app = build_app(local, [local_cfg.name], batch_window_ms=5)
    with serve_in_background(app) as url:
        cfg = tiny_model_config(
            "+backend@model.role_backends.world_model=websynthesis",
            f"model.role_backends.world_model.base_url={url}/v1",
        )
        routed = routed_backend(cfg)
        try:
            greedy = Sampling(max_new_tokens=8)
            requests = [
                GenerationRequest(messages=ask("world_model", "page").messages, sampling=greedy,
                                  role="world_model", grammar='root ::= "a" [b-d]*'),
                GenerationRequest(messages=ask("policy", "act").messages, sampling=greedy,
                                  role="policy"),
            ]  # fmt: skip
            answers = generate(routed, requests)
        finally:
            routed.close()
        assert app.state.stats.requests == 1  # the world model's request, over HTTP
    direct = generate(local, requests)
    local.close()
    assert [a.texts for a in answers] == [d.texts for d in direct]
    assert answers[0].texts[0].startswith("a")


@pytest.mark.slow
def test_a_run_whose_world_model_never_answered_exits_non_zero(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    result = run_entry(
        "synthesize.py", "+experiment=demo", "search=small", "search.iterations=2",
        "taskset.limit=1", f"hydra.run.dir={tmp_path}",
        "+backend@model.role_backends.world_model=websynthesis",
        "model.role_backends.world_model.base_url=http://127.0.0.1:9/v1",
        "+model.role_backends.world_model.max_retries=0",
    )  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:]
    assert "every call of world_model" in result.stderr, result.stderr[-3000:]
    assert "connection" in result.stderr
    assert (tmp_path / "stats.json").is_file()  # what it did is still written
