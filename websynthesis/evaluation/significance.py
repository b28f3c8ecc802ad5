"""How sure a success rate is, and whether two policies differ on the same episodes.

Why these two: a success rate from a few hundred episodes is an estimate, so every rate the
evidence reports carries its Wilson 95 % interval (correct near 0 and 1, where the normal
approximation is not). Two arms evaluated on the *same* held-out episodes (task, seed,
attempt) are paired: what tells them apart is only the episodes where one succeeded and the
other failed, and McNemar's exact test (a binomial test on those discordant pairs) uses
exactly that, with more power than comparing two independent proportions (Fisher), which
is what 40 unpaired episodes an arm could not show.

Both come from ``scipy.stats.binomtest``. Means of per-item scores (a world model's change F1
per transition) get a seeded percentile bootstrap (:func:`bootstrap_mean`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

Z95 = 0.95


@dataclass(frozen=True)
class Rate:
    """``successes`` of ``episodes`` with its Wilson interval (fractions in [0, 1])."""

    successes: int
    episodes: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "successes": self.successes,
            "episodes": self.episodes,
            "rate": round(self.rate, 4),
            "ci95": [round(self.low, 4), round(self.high, 4)],
        }


def wilson(successes: int, episodes: int, confidence: float = Z95) -> Rate:
    """The Wilson score interval of ``successes / episodes`` (``[0, 1]`` for no episode)."""
    if not 0 <= successes <= episodes:
        raise ValueError(f"need 0 <= successes <= episodes, got {successes}/{episodes}")
    if episodes == 0:
        return Rate(0, 0, 0.0, 1.0)
    interval = binomtest(successes, episodes).proportion_ci(confidence, method="wilson")
    return Rate(successes, episodes, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class Paired:
    """Two arms on their common episodes: ``only_a`` = a succeeded where b failed."""

    episodes: int
    both: int
    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mcnemar(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> Paired:
    """McNemar's exact two-sided test on the episodes both arms ran (keys present in both).

    Raises ``ValueError`` when they share none: a comparison over no common episode is a
    misconfigured evaluation (other seeds), not a p-value of 1.
    """
    common = a.keys() & b.keys()
    if not common:
        raise ValueError("the two arms share no episode: they were not evaluated on the same seeds")
    only_a = sum(1 for key in common if a[key] and not b[key])
    only_b = sum(1 for key in common if b[key] and not a[key])
    both = sum(1 for key in common if a[key] and b[key])
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return Paired(len(common), both, only_a, only_b, min(1.0, p))


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0, confidence: float = Z95
) -> tuple[float, float, float] | None:
    """The mean of ``values`` and its percentile-bootstrap interval (``None`` for no value).

    For paired differences (a world model's change F1 minus copying's on the same
    transitions) pass the per-item differences: the interval is then the difference's.
    Seeded, so a report regenerated from the same numbers shows the same interval.
    """
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(data.mean()), float(low), float(high)
