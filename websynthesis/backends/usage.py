"""Token usage and cost per role, for ``stats.json`` and budget checks.

A synthesis run asks several roles (policy, world model, reward, judge) many
questions, possibly of different models; what it spent is counted per
``(role, model)`` bucket. Only *counts* are stored: a cost is always computed
from a bucket's token counts and the price table, in :class:`~decimal.Decimal`,
so the costs reported are exactly the tokens reported times their prices, and
trackers merged from several workers give the same costs as one tracker that
saw everything.

What counts: ``calls`` are requests a backend answered (successfully or not),
``cached_calls`` requests answered from the response cache (which report zero
tokens, since nothing was spent), ``errors`` failed requests. Token counts are
what the generations report, failed ones included (a server may bill them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any

from websynthesis.backends.types import Generation, GenerationRequest

log = logging.getLogger(__name__)

_PER_TOKEN = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million prompt / completion tokens of one model."""

    prompt_per_1m: Decimal
    completion_per_1m: Decimal

    @classmethod
    def from_config(cls, model: str, entry: Mapping[str, Any]) -> Price:
        """Read ``{prompt_per_1m, completion_per_1m}``; via ``str`` so ``0.15`` stays exact."""
        try:
            return cls(
                prompt_per_1m=Decimal(str(entry["prompt_per_1m"])),
                completion_per_1m=Decimal(str(entry["completion_per_1m"])),
            )
        except KeyError as exc:
            raise ValueError(f"price of model {model!r} lacks {exc.args[0]!r}") from None

    def cost(self, counts: UsageCounts) -> Decimal:
        return (
            counts.prompt_tokens * self.prompt_per_1m
            + counts.completion_tokens * self.completion_per_1m
        ) / _PER_TOKEN


@dataclass
class UsageCounts:
    """Counters of one bucket (or a sum of buckets)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    errors: int = 0

    def add(self, other: UsageCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def of(cls, generation: Generation) -> UsageCounts:
        """What one answered request adds to its bucket."""
        return cls(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            calls=0 if generation.cached else 1,
            cached_calls=1 if generation.cached else 0,
            errors=0 if generation.ok else 1,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageTracker:
    """Thread- and task-safe usage counters per ``(role, model)``, with costs.

    ``prices`` maps a model name (the name requests are billed under: the
    served model or adapter name, or the backend's base model) to
    ``{prompt_per_1m, completion_per_1m}``. Models without a price get
    ``cost_usd: None`` and are listed under ``unpriced_models``, so a missing
    entry is visible instead of silently free.
    """

    def __init__(self, prices: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._prices = {m: Price.from_config(m, p) for m, p in (prices or {}).items()}
        self._buckets: dict[tuple[str, str], UsageCounts] = {}
        self._lock = threading.Lock()

    def exhausted(
        self,
        tokens: int | None = None,
        cost_usd: float | None = None,
        *,
        earlier: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether a budget (``None``: none) is spent: this tracker's total tokens or cost
        plus ``earlier`` sessions' (a :meth:`to_dict`'s ``total``) reach it. An unpriced
        model counts as free here: its calls are listed under ``unpriced_models``."""
        earlier = earlier or {}
        spent_tokens = int(earlier.get("total_tokens") or 0) + self.counts().total_tokens
        if tokens is not None and spent_tokens >= tokens:
            return True
        return cost_usd is not None and (
            float(earlier.get("cost_usd") or 0.0) + float(self.cost()) >= cost_usd
        )

    def record(self, role: str, model: str, generation: Generation) -> None:
        """Count one answered request of ``role`` billed under ``model``."""
        self._add(role, model, UsageCounts.of(generation))

    def record_batch(
        self,
        requests: Sequence[GenerationRequest],
        generations: Sequence[Generation],
        default_model: str,
    ) -> None:
        """Count a batch; a request without ``model`` is billed under ``default_model``."""
        if len(requests) != len(generations):
            raise ValueError(f"{len(requests)} requests but {len(generations)} generations")
        for request, generation in zip(requests, generations, strict=True):
            self.record(request.role, request.model or default_model, generation)

    def merge(self, other: UsageTracker | Mapping[str, Any]) -> None:
        """Add another tracker's counts, or a :meth:`to_dict` of one (e.g. a worker's stats)."""
        if isinstance(other, UsageTracker):
            items = other._snapshot().items()
        else:
            items = _buckets_from_dict(other)
        for (role, model), counts in items:
            self._add(role, model, counts)

    def counts(self, role: str | None = None) -> UsageCounts:
        """Summed counters of one role, or of all roles."""
        total = UsageCounts()
        for (bucket_role, _), counts in self._snapshot().items():
            if role is None or bucket_role == role:
                total.add(counts)
        return total

    def cost(self, role: str | None = None) -> Decimal:
        """Exact USD cost of one role, or of all roles, over priced models only."""
        total = Decimal(0)
        for (bucket_role, model), counts in self._snapshot().items():
            price = self._prices.get(model)
            if price is not None and (role is None or bucket_role == role):
                total += price.cost(counts)
        return total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: per role, per model within a role, and a total.

        Every ``cost_usd`` is the exact Decimal cost of the token counts next to
        it, rounded once to a float.
        """
        snapshot = self._snapshot()
        roles: dict[str, Any] = {}
        for role in sorted({r for r, _ in snapshot}):
            models = {m: c for (r, m), c in snapshot.items() if r == role}
            roles[role] = self._summary(models) | {
                "models": {m: self._summary({m: c}) for m, c in sorted(models.items())}
            }
        by_model: dict[str, UsageCounts] = {}
        for (_, model), counts in snapshot.items():
            by_model.setdefault(model, UsageCounts()).add(counts)
        unpriced = sorted(m for m in by_model if m not in self._prices)
        return {"roles": roles, "total": self._summary(by_model), "unpriced_models": unpriced}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], prices: Mapping[str, Mapping[str, Any]] | None = None
    ) -> UsageTracker:
        """Rebuild a tracker from :meth:`to_dict` (costs are recomputed from ``prices``)."""
        tracker = cls(prices)
        tracker.merge(data)
        return tracker

    def _summary(self, models: Mapping[str, UsageCounts]) -> dict[str, Any]:
        """Counters of ``models`` summed, and their cost over the priced ones (None if none is)."""
        counts = UsageCounts()
        cost: Decimal | None = None
        for model, bucket in models.items():
            counts.add(bucket)
            price = self._prices.get(model)
            if price is not None:
                cost = (cost or Decimal(0)) + price.cost(bucket)
        return asdict(counts) | {
            "total_tokens": counts.total_tokens,
            "cost_usd": None if cost is None else float(cost),
        }

    def _add(self, role: str, model: str, counts: UsageCounts) -> None:
        with self._lock:
            bucket = self._buckets.get((role, model))
            if bucket is None:
                bucket = self._buckets[(role, model)] = UsageCounts()
                if model not in self._prices and self._prices:
                    log.warning("no price for model %r; its cost is reported as None", model)
            bucket.add(counts)

    def _snapshot(self) -> dict[tuple[str, str], UsageCounts]:
        with self._lock:
            return {key: UsageCounts(**asdict(c)) for key, c in self._buckets.items()}


def _buckets_from_dict(data: Mapping[str, Any]) -> Iterable[tuple[tuple[str, str], UsageCounts]]:
    names = [f.name for f in fields(UsageCounts)]
    for role, summary in data.get("roles", {}).items():
        for model, bucket in summary.get("models", {}).items():
            yield (role, model), UsageCounts(**{n: int(bucket.get(n, 0)) for n in names})
