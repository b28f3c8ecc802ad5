"""One backend per role: the policy local with its adapter, the world model on a vLLM server,
the reward model on an API, in one model config.

``model.backend`` answers every role; ``model.role_backends.<role>`` (any backend config,
e.g. from the ``backend`` config group) takes one role over::

    python synthesize.py world=model \\
        +backend@model.role_backends.world_model=vllm \\
        model.role_backends.world_model.base_url=http://127.0.0.1:8000/v1 \\
        model.role_backends.world_model.model=world_model

:class:`RoleRouter` sends each request to its role's backend (``GenerationRequest.role``)
and the rest to the default, all at once, so callers keep seeing one
:class:`~websynthesis.backends.types.Backend`.

Why the check at start (:func:`check_constraints`): a constrained role whose server cannot
take a grammar fails every call, one by one, as ``grammar_unsupported``; a run with it
would search and train on nothing while looking busy. So :func:`routed_backend` refuses such
a config before anything runs, naming the role, its backend and the two ways out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from websynthesis.backends.types import Backend, Generation, GenerationRequest

log = logging.getLogger(__name__)


class RoleRouter:
    """A :class:`Backend` that answers each request with its role's backend."""

    def __init__(self, default: Backend, by_role: Mapping[str, Backend]) -> None:
        self.default = default
        self.by_role = dict(by_role)

    def backend_for(self, role: str) -> Backend:
        return self.by_role.get(role, self.default)

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        groups: dict[int, tuple[Backend, list[int]]] = {}
        for index, request in enumerate(requests):
            backend = self.backend_for(request.role)
            groups.setdefault(id(backend), (backend, []))[1].append(index)
        answers = await asyncio.gather(
            *(backend.agenerate([requests[i] for i in ids]) for backend, ids in groups.values())
        )
        results: list[Generation | None] = [None] * len(requests)
        for (backend, indices), generations in zip(groups.values(), answers, strict=True):
            if len(generations) != len(indices):
                raise RuntimeError(
                    f"{type(backend).__name__} answered {len(generations)} of {len(indices)}"
                )
            for index, generation in zip(indices, generations, strict=True):
                results[index] = generation
        return [result for result in results if result is not None]

    @property
    def cache_identity(self) -> dict[str, Any] | None:
        """Every backend's identity (``None`` when one has none, which the cache refuses): a
        role moved to another server is never answered from the previous one's cache."""
        identities = {role: _identity(b) for role, b in sorted(self.by_role.items())}
        default = _identity(self.default)
        if default is None or None in identities.values():
            return None
        return {"kind": "routed", "default": default, "roles": identities}

    def close(self) -> None:
        for backend in [self.default, *self.by_role.values()]:
            backend.close()


def routed_backend(model_cfg: Any) -> Backend:
    """``model_cfg.backend``, with ``model_cfg.role_backends`` routed per role, checked."""
    from hydra.utils import instantiate  # Hydra is only needed on this path

    default = instantiate(model_cfg.backend)
    by_role = {
        str(role): instantiate(node)
        for role, node in (model_cfg.get("role_backends") or {}).items()
        if node is not None
    }
    router = RoleRouter(default, by_role)
    try:
        unknown = sorted(set(by_role) - set(model_cfg.roles))
        if unknown:
            raise ValueError(
                f"model.role_backends names {unknown}, which are not roles "
                f"(roles: {sorted(model_cfg.roles)})"
            )
        check_constraints(model_cfg.roles, router)
    except ValueError:
        router.close()
        raise
    return router if by_role else default


def check_constraints(roles: Mapping[str, Any], backend: Backend) -> None:
    """Raise ValueError when a constrained role's backend cannot carry grammars.

    A backend says it can through ``carries_grammars`` (absent: assumed able, and its
    errors still arrive per request); an OpenAI-compatible one with
    ``on_unsupported_grammar=ignore`` was told to send such requests unconstrained.
    """
    for name, role in roles.items():
        if not role.get("constrained"):
            continue
        target = backend.backend_for(name) if isinstance(backend, RoleRouter) else backend
        if getattr(target, "carries_grammars", True):
            continue
        if getattr(target, "on_unsupported_grammar", "error") == "ignore":
            log.warning("role %s is constrained but %r sends it unconstrained", name, target)
            continue
        where = f"model.role_backends.{name}" if _routed(backend, name) else "model.backend"
        raise ValueError(
            f"role {name!r} decodes under a grammar (model.roles.{name}.constrained=true) but "
            f"its backend {target!r} cannot carry one: set {where}.grammar_mode to the "
            "server's dialect (vllm, vllm_legacy, sglang, websynthesis), or "
            f"model.roles.{name}.constrained=false"
        )


def _routed(backend: Backend, role: str) -> bool:
    return isinstance(backend, RoleRouter) and role in backend.by_role


def _identity(backend: Backend) -> Any:
    return getattr(backend, "cache_identity", None)
