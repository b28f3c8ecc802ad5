"""The web side of WebMCTS: worlds, the search policy, extraction of training data, the run dir.

The search algorithm (:mod:`websynthesis.search`) knows nothing of the web; this package
gives it web states (:class:`WebState`), dynamics (:class:`ModelWorld`, the
:class:`BrowserWorld` interface for live sites), a policy and evaluator
(:class:`WebSearchPolicy`), and turns finished trees into chat-format training examples
(:class:`Extractor`) stored resumably in a run dir (:class:`RunStore`);
``browser_world`` implements the live world on ``env``'s browsers, ``view`` draws a stored
tree as an HTML page. ``websynthesis.pipelines.synthesize`` puts them together behind
``synthesize.py``. Layer: above ``search``, ``data`` and ``env``. See ``tests/test_layers.py``.
"""

from websynthesis.synthesis.extract import Extracted, Extractor
from websynthesis.synthesis.policy import WebSearchPolicy
from websynthesis.synthesis.progress import ProgressDisplay
from websynthesis.synthesis.settings import engine_settings, search_settings
from websynthesis.synthesis.state import Goal, WebState, history
from websynthesis.synthesis.stats import merge_counts, run_stats, task_summary
from websynthesis.synthesis.store import (
    POLICY_KINDS,
    TRAJECTORY_KINDS,
    RunDirBusy,
    RunStore,
    previous_stats,
    tree_record,
)
from websynthesis.synthesis.world import BrowserWorld, ModelWorld, Unsearchable, WebWorld

__all__ = [
    "POLICY_KINDS",
    "TRAJECTORY_KINDS",
    "BrowserWorld",
    "Extracted",
    "Extractor",
    "Goal",
    "ModelWorld",
    "ProgressDisplay",
    "RunDirBusy",
    "RunStore",
    "Unsearchable",
    "WebSearchPolicy",
    "WebState",
    "WebWorld",
    "engine_settings",
    "history",
    "merge_counts",
    "previous_stats",
    "run_stats",
    "search_settings",
    "task_summary",
    "tree_record",
]
