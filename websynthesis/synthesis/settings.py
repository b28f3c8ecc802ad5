"""``cfg.search`` (reward units, as the paper states them) onto the search core's configs.

The core compares values on a declared scale and runs UCT on values normalised to [0, 1]
(:mod:`websynthesis.search.settings`). Here the scale is the reward role's (1-5 by default),
so saved trees keep the scores the reward model gave, and the reference's exploration
constant is converted: its UCB was ``V + c * sqrt(2 ln N / n)`` on raw rewards, which on
normalised values is the core's ``sqrt(ln N / n)`` term with ``c * sqrt(2) / (high - low)``.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from websynthesis.roles.parsing import ScoreScale
from websynthesis.search import EngineSettings, SearchSettings

DERIVED = ("exploration", "low", "high", "seed")
"""The core's knobs that ``cfg.search`` does not hold: the exploration constant converted
from reward units, the reward role's scale and the job's seed."""
SHARED = tuple(f.name for f in fields(SearchSettings) if f.name not in DERIVED)
"""The core's knobs that ``cfg.search`` holds under the same name, taken as they are."""


def search_settings(search: Any, scale: ScoreScale, seed: int) -> SearchSettings:
    """The core's :class:`SearchSettings` for ``cfg.search`` on the reward ``scale``."""
    if not scale.low <= search.end_gate <= scale.high:
        raise ValueError(
            f"search.end_gate={search.end_gate} is outside the reward scale "
            f"[{scale.low}, {scale.high}] (model.roles.reward.score_low/score_high)"
        )
    return SearchSettings(
        **{name: search[name] for name in SHARED},
        exploration=search.exploration_constant * math.sqrt(2) / (scale.high - scale.low),
        low=scale.low,
        high=scale.high,
        seed=seed,
    )


def engine_settings(search: Any, batching: Any) -> EngineSettings:
    """How ``cfg.search``'s trees run together; each wave's requests go out as one batch
    when ``cfg.model.batching`` is enabled."""
    return EngineSettings(
        concurrent_trees=search.concurrent_trees,
        in_flight_per_tree=search.in_flight_per_tree,
        batch=batching.enabled,
    )
