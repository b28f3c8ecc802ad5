"""Wilson intervals and McNemar's paired test, on hand-checked cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from websynthesis.evaluation.significance import bootstrap_mean, mcnemar, wilson


def test_wilson_matches_the_published_intervals() -> None:
    # The figures: 4/40 -> [4, 23] %, 9/40 -> [12, 38] %.
    low, high = wilson(4, 40).low, wilson(4, 40).high
    assert (round(low * 100), round(high * 100)) == (4, 23)
    nine = wilson(9, 40)
    assert (round(nine.low * 100), round(nine.high * 100)) == (12, 38)
    assert wilson(0, 0).to_dict()["ci95"] == [0.0, 1.0]
    with pytest.raises(ValueError):
        wilson(5, 4)


@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_rate_and_stays_in_bounds(kn: tuple[int, int]) -> None:
    k, n = kn
    rate = wilson(k, n)
    assert 0.0 <= rate.low <= k / n <= rate.high <= 1.0
    assert rate.high - rate.low < 1.0


def test_mcnemar_counts_discordant_pairs_only() -> None:
    keys = [("t", seed, 0) for seed in range(20)]
    a = {key: True for key in keys}
    b = {key: i < 10 for i, key in enumerate(keys)}
    paired = mcnemar(a, b)
    assert (paired.episodes, paired.both, paired.only_a, paired.only_b) == (20, 10, 10, 0)
    assert paired.p_value == pytest.approx(2 * 0.5**10)  # exact two-sided binomial
    assert mcnemar(a, a).p_value == 1.0
    assert mcnemar(a | {("x", 1, 0): False}, b).episodes == 20  # unpaired episodes left out
    with pytest.raises(ValueError, match="share no episode"):
        mcnemar(a, {("other", 1, 0): True})


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_is_symmetric_and_a_probability(pairs: list[tuple[bool, bool]]) -> None:
    a = {i: x for i, (x, _) in enumerate(pairs)}
    b = {i: y for i, (_, y) in enumerate(pairs)}
    ab, ba = mcnemar(a, b), mcnemar(b, a)
    assert 0.0 < ab.p_value <= 1.0
    assert ab.p_value == pytest.approx(ba.p_value)
    assert (ab.only_a, ab.only_b) == (ba.only_b, ba.only_a)


def test_bootstrap_mean_brackets_the_mean_and_is_seeded() -> None:
    values = [0.0] * 30 + [1.0] * 10
    mean, low, high = bootstrap_mean(values)  # type: ignore[misc]
    assert mean == 0.25 and 0.1 < low < 0.25 < high < 0.4
    assert bootstrap_mean(values) == bootstrap_mean(values)
    assert bootstrap_mean([0.5] * 7) == (0.5, 0.5, 0.5)
    assert bootstrap_mean([]) is None
