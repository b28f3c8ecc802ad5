"""ModelWorld and WebSearchPolicy against scripted backends (exact control over every answer).

:class:`Website` is a deterministic fake of the :class:`Backend` protocol that plays all the
roles over a three-page bookshop; the extraction and pipeline tests import it from here.
Tests named ``test_b<N>_...`` are regressions for the reference bugs of the audit (§8).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence

import pytest
from omegaconf import OmegaConf

from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.config import SearchConfig
from websynthesis.data.tasks import Task
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.roles.parsing import ScoreScale
from websynthesis.roles.prompts import PromptStyle
from websynthesis.search import (
    Context,
    Node,
    SearchSettings,
    StepOutcome,
    StopReason,
    TerminalKind,
    TreeSearch,
    backpropagate,
)
from websynthesis.synthesis import (
    BrowserWorld,
    Extractor,
    Goal,
    ModelWorld,
    WebSearchPolicy,
    WebState,
    search_settings,
)
from websynthesis.synthesis.world import Unsearchable
from websynthesis.web.actions import ANSWER_PHRASE, Action, ActionKind, parse_action
from websynthesis.web.observation import parse_axtree

HOME = (
    "Tab 0 (current): Books\n\n"
    "[1] RootWebArea 'Books' focused: True\n"
    "\t[15] searchbox 'Search' required: False\n"
    "\t[16] button 'Go'\n"
    "\t[21] link 'Fiction'"
)
RESULTS = (
    "Tab 0 (current): Results\n\n"
    "[1] RootWebArea 'Results' focused: True\n"
    "\t[30] link 'The Dispossessed'\n"
    "\t[31] StaticText 'by Ursula K. Le Guin'"
)
FICTION = "Tab 0 (current): Fiction\n\n[1] RootWebArea 'Fiction' focused: True\n\t[40] link 'Dune'"
BOOK = "Tab 0 (current): The Dispossessed\n\n[1] RootWebArea 'The Dispossessed' focused: True"
PAGES = {"Books": HOME, "Results": RESULTS, "Fiction": FICTION, "The Dispossessed": BOOK}
OBJECTIVE = "Find a book by Ursula K. Le Guin"
SITE = "http://books.test"

# What the policy proposes on each page, sample by sample (a duplicate and an invalid id on
# the home page), what each action leads to, and what the reward model says of it.
PROPOSALS = {
    "Books": ["type [15] [Le Guin] [1]", "type [15] [Le  Guin]", "click [99]", "click [21]"],
    "Results": ["stop [The Dispossessed]", "click [30]", "click [30]", "scroll [down]"],
    "Fiction": ["click [40]", "go_back", "go_back", "click [40]"],
}
LEADS_TO = {"type [15] [Le Guin] [1]": RESULTS, "click [21]": FICTION, "click [30]": BOOK}
SCORES = {"type [15] [Le Guin] [1]": 4, "stop [The Dispossessed]": 5, "click [21]": 2}
# A reasoning that mentions stop actions and onestopmarket.com (the reference skipped the
# world model for any response containing "stop": B1).
THOUGHTS = {"click [21]": "Before I stop [N/A], onestopmarket.com says fiction may list it."}
REFLECTION = (
    "Let's think step-by-step. This page does not list books by the author; the search "
    f"results did. {ANSWER_PHRASE} ```go_back```"
)


def answer(action: str, thought: str = "I look at the page.") -> str:
    return f"Let's think step-by-step. {thought} {ANSWER_PHRASE} ```{action}```"


def last(pattern: str, text: str) -> str:
    matches = re.findall(pattern, text)
    assert matches, (pattern, text[-300:])
    return str(matches[-1])


class Website:
    """Plays the policy, world model, reward and reflection roles over ``PAGES``.

    Answers depend on the request only (like a seeded model), so searches are reproducible;
    ``calls`` records every batch.
    """

    cache_identity = "scripted-website"

    def __init__(self) -> None:
        self.calls: list[list[GenerationRequest]] = []
        self.closed = False

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(list(requests))
        out = []
        for request in requests:
            texts = [self.reply(request, j) for j in range(request.sampling.n)]
            out.append(Generation(texts, 50, 10 * len(texts), ["stop"] * len(texts)))
        return out

    def reply(self, request: GenerationRequest, j: int) -> str:
        user = request.messages[-1]["content"]
        if request.role == "policy":
            title = last(r"Tab 0 \(current\): (.*)", user)
            options = PROPOSALS.get(title, ["stop [N/A]"])
            action = options[j % len(options)]
            return answer(action, THOUGHTS.get(action, "I look at the page."))
        if request.role == "world_model":
            action = last(r"\nACTION:\n(.+)\n", user)
            page = LEADS_TO.get(action)
            return "I cannot tell." if page is None else f"<a11y>\n{page}\n</a11y>"
        if request.role == "reward":
            action = last(r"ACTION:\n(.+)\n</step-", user)
            return f"Reason: judged {action}.\nScore: {SCORES.get(action, 1)}"
        if request.role == "reflection":
            return REFLECTION
        raise AssertionError(f"unexpected role {request.role!r}")

    def close(self) -> None:
        self.closed = True

    def requests(self, role: str) -> list[GenerationRequest]:
        return [r for batch in self.calls for r in batch if r.role == role]


ROLES = {
    "policy": RoleSettings("policy", temperature=1.0, max_retries=0),
    "world_model": RoleSettings("world_model", temperature=0.7, max_retries=1),
    "reward": RoleSettings("reward", temperature=0.7, max_retries=1),
    "reflection": RoleSettings("reflection", temperature=0.7, max_retries=0),
}


def make_client(backend: object, **changes: RoleSettings) -> ModelClient:
    settings = ROLES | changes
    return ModelClient(backend, {name: Role(name, s) for name, s in settings.items()})  # type: ignore[arg-type]


def home() -> WebState:
    return WebState("t1", parse_axtree(HOME))


def goal() -> Goal:
    return Goal("t1", OBJECTIVE, (SITE,))


def context(node: Node[WebState, Action], seed: int = 7) -> Context[WebState, Action]:
    return Context(node=node, payload=goal(), seed=seed)


def child(parent: Node[WebState, Action], action: str, page: str, thought: str = "") -> Node:
    move = parse_action(action)
    node = Node(
        id=parent.id + 1,
        state=parent.state.after(move, parse_axtree(page)),
        parent=parent,
        action=move,
        thought=thought,
        depth=parent.depth + 1,
    )
    parent.children.append(node)
    return node


def search(backend: object, **config: object) -> TreeSearch[WebState, Action]:
    client = make_client(backend)
    settings = dict(branch=2, iterations=8, max_depth=4, low=1.0, high=5.0, end_gate=4.75)
    return TreeSearch(
        ModelWorld(client),
        WebSearchPolicy(client),
        home(),
        SearchSettings(**(settings | config)),  # type: ignore[arg-type]
        task_id="t1",
        payload=goal(),
    )


# --- ModelWorld --------------------------------------------------------------------------------


def test_b1_world_model_gets_the_parsed_action_never_the_reasoning() -> None:
    backend = Website()
    world = ModelWorld(make_client(backend))
    # The reasoning mentions stop actions and onestopmarket.com: still a click for the world.
    move = parse_action("click   [21]")
    transition = asyncio.run(world.step(home(), move))
    (request,) = backend.requests("world_model")
    user = request.messages[-1]["content"]
    assert "\nACTION:\nclick [21]\n" in user and "Let's think" not in user
    assert transition.error is None
    assert transition.state.observation.render() == FICTION
    assert transition.state.actions == (move,)


def test_b1_b2_a_parsed_stop_needs_no_model_and_stays_on_the_page() -> None:
    backend = Website()
    world = ModelWorld(make_client(backend))
    transition = asyncio.run(world.step(home(), parse_action("stop [The Dispossessed]")))
    assert backend.calls == [] and transition.error is None
    assert transition.state.observation.render() == HOME
    assert world.stats.stops == 1 and world.stats.steps == 1


def test_b1_reasoning_that_mentions_stop_does_not_make_a_stop_node() -> None:
    backend = Website()
    result = asyncio.run(search(backend, iterations=1).run())
    fiction = next(n for n in result.root.children if n.action == parse_action("click [21]"))
    assert "stop [N/A]" in fiction.thought and "onestopmarket" in fiction.thought
    assert fiction.terminal is None and fiction.state.observation.render() == FICTION
    asked = [r.messages[-1]["content"] for r in backend.requests("world_model")]
    assert any("\nACTION:\nclick [21]\n" in user for user in asked)


def test_b5_no_page_after_retries_is_a_typed_counted_error() -> None:
    backend = Website()
    world = ModelWorld(make_client(backend))
    state = home()
    transition = asyncio.run(world.step(state, parse_action("click [16]")))  # "I cannot tell."
    assert transition.error is not None and transition.error.startswith("no_tree")
    assert transition.state is state
    assert len(backend.requests("world_model")) == 2  # the role's retry was used
    assert world.stats.failed == {"no_tree": 1} and world.stats.predicted == 0


@pytest.mark.parametrize("accept", [False, True])
def test_a_page_with_structural_errors_is_accepted_or_failed_per_flag(accept: bool) -> None:
    broken = "Tab 0 (current): X\n\n[1] RootWebArea 'X'\n\t\t\t[5] link 'deep'"  # skips levels

    class Broken(Website):
        def reply(self, request: GenerationRequest, j: int) -> str:
            return f"<a11y>\n{broken}\n</a11y>"

    world = ModelWorld(make_client(Broken()), accept_malformed=accept)
    transition = asyncio.run(world.step(home(), parse_action("click [16]")))
    if accept:
        assert transition.error is None and world.stats.accepted_malformed == 1
        assert parse_axtree(transition.state.observation.render()).is_valid  # repaired
    else:
        assert transition.error is not None and transition.error.startswith("malformed_tree")
        assert world.stats.failed == {"malformed_tree": 1}


def test_world_reset_starts_from_the_task_page_or_says_why_not() -> None:
    world = ModelWorld(make_client(Website()))
    state = asyncio.run(world.reset(Task("t1", OBJECTIVE, state=HOME)))
    assert state.observation.render() == HOME and state.actions == () and state.task_id == "t1"
    with pytest.raises(Unsearchable, match="no first page"):
        asyncio.run(world.reset(Task("t2", OBJECTIVE)))


# --- WebSearchPolicy ---------------------------------------------------------------------------


def test_proposals_come_from_one_request_with_n_samples_seeded_by_the_node() -> None:
    backend = Website()
    policy = WebSearchPolicy(make_client(backend))
    root = Node(id=0, state=home())
    proposals = asyncio.run(policy.propose(context(root, seed=1234), 4))
    (request,) = backend.requests("policy")
    assert len(backend.calls) == 1 and request.sampling.n == 4 and request.sampling.seed == 1234
    assert [p.action.to_string() if p.action else None for p in proposals] == [
        "type [15] [Le Guin] [1]",
        "type [15] [Le  Guin] [1]",  # a duplicate: the core drops it by equivalence
        None,
        "click [21]",
    ]
    assert proposals[2].error is not None and proposals[2].error.startswith("invalid_action")
    assert policy.stats.proposals == {"ok": 3, "invalid_action/unknown_id": 1}


def test_an_element_cut_from_the_prompt_is_not_a_valid_proposal() -> None:
    long_page = HOME + "".join(f"\n\t[{100 + i}] link 'Filler number {i}'" for i in range(60))
    small = RoleSettings(
        "policy", temperature=1.0, max_retries=0, style=PromptStyle(observation_chars=300)
    )
    backend = Website()
    policy = WebSearchPolicy(make_client(backend, policy=small))
    PROPOSALS["Books"][0] = "click [150]"  # on the page, but past the 300 characters shown
    try:
        root = Node(id=0, state=WebState("t1", parse_axtree(long_page)))
        proposals = asyncio.run(policy.propose(context(root), 2))
    finally:
        PROPOSALS["Books"][0] = "type [15] [Le Guin] [1]"
    assert proposals[0].action is None and proposals[0].error.startswith("hidden_element")
    assert proposals[1].action == parse_action("type [15] [Le  Guin] [1]")


def test_b6_an_unreadable_score_is_a_failure_not_a_zero() -> None:
    class Mumbles(Website):
        def reply(self, request: GenerationRequest, j: int) -> str:
            return "**Score**: excellent!"

    policy = WebSearchPolicy(make_client(Mumbles()))
    node = child(Node(id=0, state=home()), "click [21]", FICTION)
    evaluation = asyncio.run(policy.evaluate(context(node), node.state))
    assert not evaluation.ok and evaluation.reward is None
    assert evaluation.reason.startswith("no_score")
    assert policy.stats.evaluations == {"failed/no_score": 1}


def test_rewards_are_read_on_the_configured_scale() -> None:
    policy = WebSearchPolicy(make_client(Website()))
    node = child(Node(id=0, state=home()), "type [15] [Le Guin] [1]", RESULTS)
    evaluation = asyncio.run(policy.evaluate(context(node), node.state))
    assert evaluation.ok and evaluation.reward == 4 and "type [15]" in evaluation.reason
    ten = RoleSettings("reward", temperature=0.7, scale=ScoreScale(0, 10))
    assert WebSearchPolicy(make_client(Website(), reward=ten)).scale == ScoreScale(0, 10)


def test_the_environment_s_reward_is_used_when_the_world_gives_one() -> None:
    backend = Website()
    policy = WebSearchPolicy(make_client(backend))
    node = child(Node(id=0, state=home()), "click [21]", FICTION)
    node.env_reward = 1.0
    evaluation = asyncio.run(policy.evaluate(context(node), node.state))
    assert evaluation.reward == 5.0 and backend.calls == []  # top of the 1-5 scale
    node.env_reward = 0.0
    assert asyncio.run(policy.evaluate(context(node), node.state)).reward == 1.0


def test_b9_typing_the_same_text_into_two_fields_is_two_actions() -> None:
    policy = WebSearchPolicy(make_client(Website()))
    same_field = parse_action("type [15] [Le Guin] [1]"), parse_action("type  [15] [Le  Guin]")
    other_field = parse_action("type [15] [Le Guin] [1]"), parse_action("type [16] [Le Guin] [1]")
    assert policy.equivalent(*same_field) and not policy.equivalent(*other_field)
    assert policy.is_stop(parse_action("stop []")) and not policy.is_stop(parse_action("go_back"))


# --- the search over the scripted site ---------------------------------------------------------


def test_search_over_the_site_finds_the_answer_and_keeps_failures_as_values() -> None:
    backend = Website()
    tree = search(backend, iterations=6)
    result = asyncio.run(tree.run())
    assert result.stop_reason is StopReason.ITERATIONS
    path = result.best_path()
    assert path is not None
    assert [n.action.to_string() for n in path[1:]] == [
        "type [15] [Le Guin] [1]",
        "stop [The Dispossessed]",
    ]
    assert path[-1].terminal is TerminalKind.STOP and path[-1].reward == 5
    by_action = {n.action.to_string(): n for n in result.root.walk()[1:]}
    assert by_action["click [30]"].terminal is None  # BOOK predicted, searchable
    assert result.stats.duplicate_proposals >= 1 and result.stats.invalid_proposals >= 1


def test_b2_a_low_scored_stop_is_a_scored_leaf_not_the_end_of_the_search() -> None:
    low_stop = dict(SCORES)
    SCORES["stop [The Dispossessed]"] = 1
    try:
        result = asyncio.run(search(Website(), iterations=6).run())
    finally:
        SCORES.clear()
        SCORES.update(low_stop)
    stops = [n for n in result.root.walk() if n.terminal is TerminalKind.STOP]
    assert stops and result.best_path() is None  # no success, and the budget was used
    assert result.iterations == 6 and result.stop_reason is StopReason.ITERATIONS


def test_b7_exploration_is_mapped_from_reward_units_and_rewards_survive_backprop() -> None:
    search_cfg = OmegaConf.structured(SearchConfig)
    config = search_settings(search_cfg, ScoreScale(1, 5), seed=3)
    # V + 0.7 sqrt(2 ln N / n) on 1-5 rewards == the core's normalised UCT with c * sqrt2 / 4.
    assert config.exploration == pytest.approx(0.7 * math.sqrt(2) / 4)
    assert (config.low, config.high, config.end_gate, config.seed) == (1.0, 5.0, 4.75, 3)
    root = Node(id=0, state=home())
    leaf = child(root, "click [21]", FICTION)
    leaf.reward = 4.0
    backpropagate([root, leaf], 2.0, config)
    assert leaf.reward == 4.0 and leaf.q == 2.0  # the immediate reward is never overwritten
    search_cfg.end_gate = 6.0
    with pytest.raises(ValueError, match="outside the reward scale"):
        search_settings(search_cfg, ScoreScale(1, 5), seed=0)


def test_b3_b4_each_role_asks_its_configured_model() -> None:
    backend = Website()
    client = make_client(
        backend,
        policy=RoleSettings("policy", adapter="policy-lora", temperature=1.0, max_retries=0),
        world_model=RoleSettings("world_model", adapter="world-model-lora", temperature=0.7),
    )
    config = SearchSettings(iterations=2, low=1.0, high=5.0, end_gate=4.75)
    world, policy = ModelWorld(client), WebSearchPolicy(client)
    tree = TreeSearch(world, policy, home(), config, task_id="t1", payload=goal())
    asyncio.run(tree.run())
    assert {r.model for r in backend.requests("policy")} == {"policy-lora"}
    assert {r.model for r in backend.requests("world_model")} == {"world-model-lora"}
    assert {r.model for r in backend.requests("reward")} == {None}


def test_b8_trees_stop_at_the_depth_cap() -> None:
    result = asyncio.run(search(Website(), iterations=6, max_depth=1).run())
    assert max(n.depth for n in result.root.walk()) == 1
    assert all(n.terminal is not None for n in result.root.children)


def test_r6_goto_stays_on_the_task_s_site() -> None:
    task = Task("t1", OBJECTIVE, start_url=f"{SITE}/catalogue?page=2", sites=("books",), state=HOME)
    assert Goal.from_task(task).allowed_sites == (SITE,)
    assert Goal.from_task(Task("t2", OBJECTIVE, sites=("shopping",))).allowed_sites == ("shopping",)
    PROPOSALS["Books"][0] = "goto [http://onestopmarket.com]"  # the reference's fake host
    PROPOSALS["Books"][1] = f"goto [{SITE}/search?q=le+guin]"
    try:
        proposals = asyncio.run(
            WebSearchPolicy(make_client(Website())).propose(context(Node(id=0, state=home())), 2)
        )
    finally:
        PROPOSALS["Books"][:2] = ["type [15] [Le Guin] [1]", "type [15] [Le  Guin]"]
    assert proposals[0].action is None and "url_not_allowed" in (proposals[0].error or "")
    assert proposals[1].action == parse_action(f"goto [{SITE}/search?q=le+guin]")


def test_d3_distinct_stop_answers_are_distinct_children() -> None:
    policy = WebSearchPolicy(make_client(Website()))
    assert not policy.equivalent(
        parse_action("stop [A: $20]"), parse_action("stop [Product-A: $20]")
    )
    assert policy.equivalent(parse_action("stop [A:  $20]"), parse_action("stop [A: $20]"))


class LiveSite(BrowserWorld):
    """A live site stand-in: states are reached by their action prefix; the task scores stops."""

    def __init__(self) -> None:
        self.prefixes: list[tuple[Action, ...]] = []

    async def reset(self, task: Task) -> WebState:
        return WebState(task.task_id, parse_axtree(HOME))

    async def step(self, state: WebState, action: Action) -> StepOutcome[WebState]:
        self.prefixes.append(state.actions)
        if action.kind is ActionKind.STOP:
            solved = action.text == "The Dispossessed"
            return StepOutcome(state.after(action), env_reward=float(solved), terminal=True)
        page = LEADS_TO.get(action.to_string())
        if page is None:  # the page refuses the action: nothing changes
            return StepOutcome(state.after(action), env_reward=0.0)
        return StepOutcome(state.after(action, parse_axtree(page)), env_reward=0.0)


def test_the_same_search_runs_on_a_browser_world_with_its_rewards() -> None:
    backend = Website()
    client = make_client(backend)
    site = LiveSite()
    root = asyncio.run(site.reset(Task("t1", OBJECTIVE, state=HOME)))
    config = SearchSettings(iterations=6, low=1.0, high=5.0, end_gate=4.75)
    tree = TreeSearch(site, WebSearchPolicy(client), root, config, task_id="t1", payload=goal())
    result = asyncio.run(tree.run())
    assert backend.requests("reward") == [] and backend.requests("world_model") == []
    path = result.best_path()
    assert path is not None and path[-1].action == parse_action("stop [The Dispossessed]")
    assert path[-1].reward == 5.0 and path[1].reward == 1.0  # the site's 1 and 0, on 1-5
    assert (parse_action("type [15] [Le Guin] [1]"),) in site.prefixes  # replayed from the root
    extractor = Extractor(client, imagined=site.imagined)
    out = asyncio.run(extractor.extract(result, goal()))
    assert len(out.valuable) == 2 and not any(e.meta["imagined"] for e in out.transitions)
