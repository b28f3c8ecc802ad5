"""Usage accounting: counts per role and model, exact costs, merging, thread safety."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.backends.usage import UsageTracker

PRICES = {
    "gpt-4o-mini": {"prompt_per_1m": 0.15, "completion_per_1m": 0.6},
    "policy": {"prompt_per_1m": 0.1, "completion_per_1m": 0.3},
}


def _gen(prompt: int, completion: int, cached: bool = False, error: str | None = None):
    return Generation(
        texts=["x"], prompt_tokens=prompt, completion_tokens=completion, cached=cached, error=error
    )


def _exact_cost(prompt: int, completion: int, model: str) -> Decimal:
    price = PRICES[model]
    return (
        prompt * Decimal(str(price["prompt_per_1m"]))
        + completion * Decimal(str(price["completion_per_1m"]))
    ) / Decimal(1_000_000)


def test_counts_per_role_and_model() -> None:
    tracker = UsageTracker(PRICES)
    tracker.record("policy", "policy", _gen(100, 20))
    tracker.record("policy", "policy", _gen(0, 0, cached=True))
    tracker.record("judge", "gpt-4o-mini", _gen(50, 5))
    tracker.record("judge", "gpt-4o-mini", _gen(7, 0, error="server_error: HTTP 500"))
    report = tracker.to_dict()
    policy = report["roles"]["policy"]
    assert (policy["prompt_tokens"], policy["completion_tokens"]) == (100, 20)
    assert (policy["calls"], policy["cached_calls"], policy["errors"]) == (1, 1, 0)
    judge = report["roles"]["judge"]
    assert (judge["prompt_tokens"], judge["calls"], judge["errors"]) == (57, 2, 1)
    total = report["total"]
    assert total["total_tokens"] == 100 + 20 + 57 + 5
    assert (total["calls"], total["cached_calls"], total["errors"]) == (3, 1, 1)
    assert report["unpriced_models"] == []
    json.dumps(report)  # stats.json-ready


def test_costs_add_up_exactly_to_reported_usage() -> None:
    tracker = UsageTracker(PRICES)
    for i in range(1, 40):
        tracker.record("policy", "policy", _gen(1000 + i, 37 * i))
        tracker.record("reward", "gpt-4o-mini", _gen(333 * i, 11))
        tracker.record("policy", "gpt-4o-mini", _gen(7 * i, 3 * i))
    report = tracker.to_dict()
    grand = Decimal(0)
    for role, summary in report["roles"].items():
        role_cost = Decimal(0)
        for model, bucket in summary["models"].items():
            cost = _exact_cost(bucket["prompt_tokens"], bucket["completion_tokens"], model)
            assert bucket["cost_usd"] == float(cost), (role, model)
            role_cost += cost
        assert summary["cost_usd"] == float(role_cost)
        assert tracker.cost(role) == role_cost
        grand += role_cost
    assert report["total"]["cost_usd"] == float(grand)
    assert tracker.cost() == grand
    for field in ("prompt_tokens", "completion_tokens", "calls"):
        assert sum(r[field] for r in report["roles"].values()) == report["total"][field]


def test_unpriced_models_are_visible_not_free(caplog: pytest.LogCaptureFixture) -> None:
    tracker = UsageTracker(PRICES)
    tracker.record("world_model", "mystery", _gen(10, 10))
    tracker.record("policy", "policy", _gen(10, 10))
    report = tracker.to_dict()
    assert report["roles"]["world_model"]["cost_usd"] is None
    assert report["unpriced_models"] == ["mystery"]
    assert report["total"]["cost_usd"] == float(_exact_cost(10, 10, "policy"))
    assert "mystery" in caplog.text
    assert UsageTracker().to_dict()["total"]["cost_usd"] is None


def test_bad_price_entry_is_rejected() -> None:
    with pytest.raises(ValueError, match="completion_per_1m"):
        UsageTracker({"m": {"prompt_per_1m": 1.0}})


def test_record_batch_bills_base_model_for_requests_without_one() -> None:
    tracker = UsageTracker(PRICES)
    requests = [
        GenerationRequest(messages=({"role": "user", "content": "a"},), role="judge"),
        GenerationRequest(
            messages=({"role": "user", "content": "b"},), model="policy", role="policy"
        ),
    ]
    tracker.record_batch(requests, [_gen(5, 1), _gen(6, 2)], default_model="gpt-4o-mini")
    report = tracker.to_dict()
    assert list(report["roles"]["judge"]["models"]) == ["gpt-4o-mini"]
    assert list(report["roles"]["policy"]["models"]) == ["policy"]
    with pytest.raises(ValueError):
        tracker.record_batch(requests, [_gen(1, 1)], default_model="x")


def test_thread_safe_counting() -> None:
    tracker = UsageTracker(PRICES)

    def work() -> None:
        for _ in range(500):
            tracker.record("policy", "policy", _gen(3, 2))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = tracker.counts("policy")
    assert (counts.calls, counts.prompt_tokens, counts.completion_tokens) == (4000, 12000, 8000)


_RECORDS = st.lists(
    st.tuples(
        st.sampled_from(["policy", "world_model", "judge"]),
        st.sampled_from(["policy", "gpt-4o-mini", "unpriced"]),
        st.integers(0, 10**6),
        st.integers(0, 10**5),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(records=_RECORDS, split=st.integers(0, 30))
def test_merge_equals_one_tracker(records, split) -> None:
    whole, left, right = UsageTracker(PRICES), UsageTracker(PRICES), UsageTracker(PRICES)
    for i, (role, model, prompt, completion, cached) in enumerate(records):
        generation = _gen(prompt, completion, cached=cached)
        whole.record(role, model, generation)
        (left if i < split else right).record(role, model, generation)
    merged = UsageTracker(PRICES)
    merged.merge(left)
    merged.merge(right.to_dict())  # a worker's stats.json
    assert merged.to_dict() == whole.to_dict()
    assert UsageTracker.from_dict(whole.to_dict(), PRICES).to_dict() == whole.to_dict()
