"""``cfg.search`` (reward units, as the paper states them) onto the search core's configs.

The core compares values on a declared scale and runs UCT on values normalised to [0, 1]
(:mod:`websynthesis.search.config`). Here the scale is the reward role's (1-5 by default),
so saved trees keep the scores the reward model gave, and the reference's exploration
constant is converted: its UCB was ``V + c * sqrt(2 ln N / n)`` on raw rewards, which on
normalised values is the core's ``sqrt(ln N / n)`` term with ``c * sqrt(2) / (high - low)``.
"""

from __future__ import annotations

import math
from typing import Any

from websynthesis.models.parsing import ScoreScale
from websynthesis.search import EngineConfig, SearchConfig


def core_search_config(search: Any, scale: ScoreScale, seed: int) -> SearchConfig:
    """The core's :class:`SearchConfig` for ``cfg.search`` on the reward ``scale``."""
    if not scale.low <= search.end_gate <= scale.high:
        raise ValueError(
            f"search.end_gate={search.end_gate} is outside the reward scale "
            f"[{scale.low}, {scale.high}] (model.roles.reward.score_low/score_high)"
        )
    return SearchConfig(
        branch=search.branch,
        oversample=search.oversample,
        iterations=search.iterations,
        max_depth=search.max_depth,
        time_limit_s=search.time_limit_s,
        exploration=search.exploration_constant * math.sqrt(2) / (scale.high - scale.low),
        low=scale.low,
        high=scale.high,
        end_gate=search.end_gate,
        failed_reward=search.failed_reward,
        discount=search.discount,
        roll_forward_steps=search.roll_forward_steps,
        roll_policy=search.roll_policy,
        roll_branch=search.roll_branch,
        rollout_value=search.rollout_value,
        alpha=search.alpha,
        stop_on_solution=search.stop_on_solution,
        seed=seed,
    )


def engine_config(search: Any) -> EngineConfig:
    return EngineConfig(
        concurrent_trees=search.concurrent_trees,
        in_flight_per_tree=search.in_flight_per_tree,
        batch=search.batch,
    )
