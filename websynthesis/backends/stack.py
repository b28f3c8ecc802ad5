"""The backend stack a job talks to, built in one place for synthesize, evaluate and serve.

From the bottom: the configured backend (``model.backend``, with ``model.role_backends``
routed per role, :func:`~websynthesis.backends.routing.routed_backend`), then optionally a
response cache (repeatable requests answered from SQLite), then optionally the batcher
(``model.batching``: concurrent callers' requests sent as one backend call). The batcher sits
on top so that a batch's cache hits never reach the model and its misses go out together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websynthesis.backends.batching import BatchingBackend
from websynthesis.backends.cache import CachedBackend
from websynthesis.backends.openai_backend import BackendStats, OpenAIBackend
from websynthesis.backends.routing import RoleRouter, routed_backend
from websynthesis.backends.types import Backend


@dataclass(frozen=True)
class BackendStack:
    """The backend the client talks to (the top), and the layers whose statistics a job
    reports (``None``: not in this stack)."""

    backend: Backend
    cache: CachedBackend | None
    batcher: BatchingBackend | None
    remotes: tuple[OpenAIBackend, ...] = ()  # the HTTP backends at the bottom, once each

    def transport(self) -> dict[str, Any] | None:
        """What the HTTP backends met (calls, retries by kind, final errors), added up;
        ``None`` without one."""
        if not self.remotes:
            return None
        total = BackendStats()
        for remote in self.remotes:
            total.add(remote.stats.to_dict())
        return total.to_dict()


def build_stack(
    model_cfg: Any,
    *,
    backend: Backend | None = None,
    cache_dir: str | Path | None = None,
    batch: bool = True,
) -> BackendStack:
    """The stack for ``model_cfg`` (a ``model`` config node).

    Args:
        backend: the bottom of the stack instead of ``model_cfg.backend`` (tests, a model
            already loaded).
        cache_dir: where ``responses/<model name>.sqlite`` lives; ``None``: no cache.
        batch: whether ``model.batching`` may add the batcher (``model.batching.enabled``
            decides); a server batches in its own window instead.
    """
    inner = backend if backend is not None else routed_backend(model_cfg)
    bottoms = [inner.default, *inner.by_role.values()] if isinstance(inner, RoleRouter) else [inner]
    remotes = tuple({id(b): b for b in bottoms if isinstance(b, OpenAIBackend)}.values())
    cache = None
    if cache_dir is not None:
        cache = CachedBackend(inner, Path(cache_dir) / "responses" / f"{model_cfg.name}.sqlite")
        inner = cache
    batcher = None
    batching = model_cfg.get("batching") or {}
    if batch and batching.get("enabled", True):
        # A wave waits for the one before it only where the backend below decodes a call to its
        # end; one that batches continuously takes each request as it comes (streaming, see
        # BatchingBackend). model.batching.max_concurrent says so for a server behind HTTP.
        concurrent = batching.get("max_concurrent") or max(
            getattr(bottom, "concurrent_batches", 1) for bottom in bottoms
        )
        batcher = BatchingBackend(
            inner,
            max_batch_size=int(batching.get("max_batch_size", 64)),
            max_concurrent=int(concurrent),
            stream=int(concurrent) > 1,  # a backend that takes calls as they come: per request
        )
        inner = batcher
    return BackendStack(inner, cache, batcher, remotes)
