"""The web search's policy: the policy role proposes, the reward role (or the site) scores.

:class:`WebSearchPolicy` implements the core's :class:`~websynthesis.search.SearchPolicy`:

- **propose**: one policy request with ``n = k`` samples (``branch * oversample``), so the
  prompt is prefilled once (the reference sent ``2 * branch`` separate requests and paid for
  all of them even after breaking out: E3), seeded by the node (reproducible). Each sample
  is parsed and validated against the page *as the prompt shows it* (an id cut from the
  prompt cannot be a trained target either); failures become ``Proposal(error=...)``, which
  the core counts and drops. Dedup (:meth:`equivalent`) and keeping ``branch`` are the
  core's.
- **evaluate**: the environment's reward when the world gave one (a live site), mapped from
  [0, 1] onto the reward scale; else the reward role on the history and the new page. A
  score the model did not give is ``Evaluation(ok=False)``, not 0 (B6).
- **is_stop**: the parsed action's kind, never a substring of the reasoning (B1, B2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from websynthesis.counters import Counters
from websynthesis.data.policy_examples import check_visible, visible_page
from websynthesis.roles.client import ModelClient
from websynthesis.roles.parsing import Decision, Parsed, ScoreScale, failure_label
from websynthesis.roles.prompts import PolicyInput, RewardInput
from websynthesis.search import Context, Evaluation, Proposal
from websynthesis.synthesis.state import Goal, WebState, history
from websynthesis.web.actions import Action, ActionKind, equivalent
from websynthesis.web.observation import AXTree

POLICY, REWARD = "policy", "reward"
ENV_REWARD_REASON = "the environment's reward"


@dataclass
class PolicyStats(Counters):
    """``proposals`` by outcome (``ok`` or ``kind/reason``); ``evaluations`` by source."""

    proposals: Counter[str] = field(default_factory=Counter)
    evaluations: Counter[str] = field(default_factory=Counter)


class WebSearchPolicy:
    """Proposals from the policy role, scores from the reward role or the environment.

    The search context's ``payload`` is the task's :class:`Goal`.
    """

    def __init__(self, client: ModelClient) -> None:
        self.client = client
        self.scale: ScoreScale = client.role(REWARD).settings.scale
        self.stats = PolicyStats()

    async def propose(self, context: Context[WebState, Action], k: int) -> list[Proposal[Action]]:
        goal: Goal = context.payload
        node = context.node
        question = PolicyInput(
            goal.objective, node.state.observation, history(node), goal.allowed_sites, goal.actions
        )
        (samples,) = await self.client.sample(POLICY, [question], n=k, seeds=[context.seed])
        shown = visible_page(self.client.role(POLICY), node.state.observation)
        return [self._proposal(sample, shown) for sample in samples]

    def _proposal(self, sample: Parsed[Decision], shown: AXTree) -> Proposal[Action]:
        decision = sample.value
        thought = "" if decision is None else decision.thought
        if sample.ok and decision is not None:
            error = check_visible(decision.action, shown)
            if error is None:
                self.stats.proposals["ok"] += 1
                return Proposal(decision.action, thought)
        else:
            error = failure_label(sample)
        self.stats.proposals[error.split(":", 1)[0]] += 1
        return Proposal(None, thought, error=error)

    async def evaluate(self, context: Context[WebState, Action], new_state: WebState) -> Evaluation:
        node = context.node
        if node.env_reward is not None:
            self.stats.evaluations["environment"] += 1
            share = min(max(node.env_reward, 0.0), 1.0)
            score = self.scale.low + share * (self.scale.high - self.scale.low)
            return Evaluation(score, ENV_REWARD_REASON)
        goal: Goal = context.payload
        question = RewardInput(goal.objective, history(node), new_state.observation)
        (outcome,) = await self.client.run(REWARD, [question])
        if outcome.ok and outcome.value is not None:
            self.stats.evaluations["reward_model"] += 1
            return Evaluation(outcome.value.score, outcome.value.reason)
        self.stats.evaluations[f"failed/{outcome.failure}"] += 1
        detail = f": {outcome.detail}" if outcome.detail else ""
        return Evaluation(None, f"{outcome.failure}{detail}"[:500], ok=False)

    def is_stop(self, action: Action) -> bool:
        return action.kind is ActionKind.STOP

    def equivalent(self, a: Action, b: Action) -> bool:
        return equivalent(a, b)
