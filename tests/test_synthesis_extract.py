"""Extraction: valuable, rollback and transition examples from a tree searched on the scripted site.

Tests named ``test_d<N>_...`` are regressions for the reference's data-extraction bugs (§8.2).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_synthesis_world_policy import (
    BOOK,
    FICTION,
    HOME,
    OBJECTIVE,
    REFLECTION,
    RESULTS,
    SITE,
    Website,
    child,
    goal,
    make_client,
    search,
)

from websynthesis.backends.types import GenerationRequest
from websynthesis.data.chat import read_chat_jsonl
from websynthesis.data.transitions import read_transitions
from websynthesis.roles.prompts import PolicyInput, Step, WorldModelInput
from websynthesis.search import (
    Node,
    SearchResult,
    SearchSettings,
    StopReason,
    TerminalKind,
    TreeStats,
)
from websynthesis.synthesis import Extractor, Goal, WebState
from websynthesis.synthesis.extract import Extracted
from websynthesis.web.action_sets import WEBARENA_ACTIONS
from websynthesis.web.actions import (
    Action,
    ActionKind,
    extract_thought_and_action,
    format_response,
)
from websynthesis.web.actions import parse_action as act
from websynthesis.web.observation import parse_axtree


def searched(backend: Website, iterations: int = 8) -> SearchResult[WebState, Action]:
    return asyncio.run(search(backend, iterations=iterations).run())


def extract(backend: Website, result: SearchResult[WebState, Action], **kw: int) -> Extracted:
    extractor = Extractor(make_client(backend), imagined=True, **kw)
    return asyncio.run(extractor.extract(result, goal()))


Run = tuple[Website, SearchResult[WebState, Action], Extracted]


@pytest.fixture(scope="module")
def run() -> Run:
    backend = Website()
    result = searched(backend)
    return backend, result, extract(backend, result)


def target_action(messages: tuple[dict[str, str], ...]) -> Action:
    return extract_thought_and_action(messages[-1]["content"])[1]


def test_d6_valuable_steps_are_the_exact_prompts_the_policy_was_asked(run: Run) -> None:
    backend, result, out = run
    path = result.best_path()
    assert path is not None and len(out.valuable) == len(path) - 1 == 2
    asked = [r.messages for r in backend.requests("policy")]
    for example, node in zip(out.valuable, path[1:], strict=True):
        prompt, (target,) = example.messages[:-1], example.messages[-1:]
        assert prompt in asked  # byte for byte what the search sent at the parent node
        assert target == {
            "role": "assistant",
            "content": format_response(node.thought, node.action),
        }
        assert example.meta["kind"] == "valuable" and example.meta["task_id"] == "t1"
        assert example.meta["node"] == node.id and example.meta["parent"] == node.parent.id
        assert example.meta["depth"] == node.depth and example.meta["reward"] == node.reward
        assert example.meta["imagined"] is True
    assert [target_action(e.messages) for e in out.valuable] == [n.action for n in path[1:]]
    assert out.valuable[-1].meta["terminal"] == "stop"


def test_d1_rollback_pairs_reflect_then_go_back_then_take_the_correct_action(run: Run) -> None:
    backend, result, out = run
    (reflection_request,) = backend.requests("reflection")[:1]
    assert "FAILED ACTION:\nclick [21]" in reflection_request.messages[-1]["content"]
    assert len(out.rollback) == 2 * len(backend.requests("reflection"))
    reflect, correct = out.rollback[0], out.rollback[1]
    assert (reflect.meta["stage"], correct.meta["stage"]) == ("reflect", "correct")
    failed, chosen = reflect.meta["failed"], reflect.meta["correct"]
    nodes = {n.id: n for n in result.root.walk()}
    assert nodes[failed].action == act("click [21]")
    assert nodes[chosen].action == act("type [15] [Le Guin] [1]")
    reason = REFLECTION.split("step-by-step. ")[1].split(" In summary")[0]
    # 1. On the failed child's page, with its step in the history: reflection + go_back.
    role = make_client(backend).role("policy")
    tried = (Step(parse_axtree(HOME), nodes[failed].thought, act("click [21]")),)
    first = PolicyInput(OBJECTIVE, parse_axtree(FICTION), tried, (SITE,))
    assert reflect.messages[:-1] == role.messages(first)
    assert reflect.messages[-1]["content"] == format_response(reason, act("go_back"))
    # 2. Back on the parent's page, the go_back step in the history: the correct action.
    went_back = (*tried, Step(parse_axtree(FICTION), reason, act("go_back")))
    second = PolicyInput(OBJECTIVE, parse_axtree(HOME), went_back, (SITE,))
    assert correct.messages[:-1] == role.messages(second)
    assert target_action(correct.messages) == act("type [15] [Le Guin] [1]")


def test_d5_only_strictly_worse_siblings_that_lead_somewhere_teach_going_back(run: Run) -> None:
    _, result, out = run
    nodes = {n.id: n for n in result.root.walk()}
    for example in out.rollback:
        failed, correct = nodes[example.meta["failed"]], nodes[example.meta["correct"]]
        assert result.config.value(failed) < result.config.value(correct)
        assert failed.terminal is not TerminalKind.WORLD_ERROR and failed.reward is not None
    # On the results page the sibling of the stop is a click whose page is predicted; its
    # world-error or stop siblings, if any, are skipped and counted, never turned into data.
    assert all(key.startswith("rollback/skipped_") for key in out.dropped if "rollback" in key)


def test_rollback_per_step_bounds_the_pairs_and_zero_turns_them_off() -> None:
    backend = Website()
    result = searched(backend)
    assert extract(backend, result, rollback_per_step=0).rollback == []


def test_an_environment_without_go_back_gets_no_rollbacks_and_no_reflection_calls() -> None:
    backend = Website()
    result = searched(backend)
    before = len(backend.requests("reflection"))
    one_page = replace(goal(), actions=WEBARENA_ACTIONS - {ActionKind.GO_BACK})
    out = asyncio.run(Extractor(make_client(backend), imagined=True).extract(result, one_page))
    assert out.rollback == [] and len(backend.requests("reflection")) == before
    assert out.dropped["rollback/skipped_go_back_undeclared"] >= 1
    assert len(out.valuable) == 2  # the valuable path does not need go_back


def test_transitions_are_the_pages_the_world_model_wrote_flagged_imagined(run: Run) -> None:
    backend, result, out = run
    predicted = [
        n
        for n in result.root.walk()[1:]
        if n.terminal is not TerminalKind.WORLD_ERROR and n.action.kind.value != "stop"
    ]
    assert len(out.transitions) == len(predicted) >= 2
    role = make_client(backend).role("world_model")
    for example, node in zip(out.transitions, predicted, strict=True):
        parent = node.parent
        question = WorldModelInput(parent.state.observation, node.action, parent.state.actions)
        assert example.messages[:-1] == role.messages(question)
        page = example.messages[-1]["content"]
        assert page == f"<a11y>\n{node.state.observation.render()}\n</a11y>"
        assert example.meta["kind"] == "transition" and example.meta["imagined"] is True
        assert example.meta["observation"] == parent.state.observation.render()
        assert example.meta["history"] == [a.to_string() for a in parent.state.actions]
    pages = {e.messages[-1]["content"].split("\n")[1] for e in out.transitions}
    assert {RESULTS.split("\n")[0], FICTION.split("\n")[0], BOOK.split("\n")[0]} <= pages


def test_transitions_read_back_as_transitions_for_world_model_training(
    run: Run, tmp_path: Path
) -> None:
    _, _, out = run
    path = tmp_path / "transitions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in out.rows()["transitions"]))
    read = list(read_transitions(path))
    assert len(read) == len(out.transitions) and all(t.imagined for t in read)
    assert [t.action.to_string() for t in read] == [e.meta["action"] for e in out.transitions]
    assert read[0].next_observation == RESULTS and read[0].observation == HOME


def test_an_action_invalid_for_its_page_is_dropped_and_counted() -> None:
    backend = Website()
    result = searched(backend)
    path = result.best_path()
    assert path is not None
    path[1].action = act("click [77]")  # not on the home page: must never become a target
    out = extract(backend, result)
    assert len(out.valuable) == 1 and out.dropped["valuable/invalid_action/unknown_id"] == 1
    assert all(e.meta["node"] != path[1].id for e in out.valuable)


def test_a_reflection_without_go_back_drops_its_pair() -> None:
    backend = Website()
    result = searched(backend)

    class NoGoBack(Website):
        def reply(self, request: GenerationRequest, j: int) -> str:
            if request.role == "reflection":
                return (
                    "It was a bad idea. In summary, the next action I will perform is ```stop []```"
                )
            return super().reply(request, j)

    out = extract(NoGoBack(), result)
    assert out.rollback == [] and out.dropped["rollback/reflection_no_go_back"] >= 1
    assert len(out.valuable) == 2  # the rest of the tree's data is unaffected


def test_examples_are_chat_jsonl_that_training_reads(run: Run, tmp_path: Path) -> None:
    _, _, out = run
    rows = out.rows()
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for kind in rows for r in rows[kind]))
    examples = list(read_chat_jsonl(path))
    assert len(examples) == len(out.valuable) + len(out.rollback) + len(out.transitions)
    assert all(e.messages[-1]["role"] == "assistant" for e in examples)
    assert out.counts() == {
        "valuable": len(out.valuable),
        "rollback": len(out.rollback),
        "transitions": len(out.transitions),
        "dropped": dict(sorted(out.dropped.items())),
    }


def test_d2_a_goto_to_onestopmarket_is_data_not_a_malformed_action() -> None:
    site = "http://onestopmarket.com"  # holds "stop": the reference spliced such steps out
    root = Node(id=0, state=WebState("t1", parse_axtree(HOME)))
    goto = child(root, f"goto [{site}/electronics]", RESULTS)
    goto.reward, goto.terminal = 5.0, TerminalKind.END_GATE
    config = SearchSettings(low=1.0, high=5.0, end_gate=4.75)
    result = SearchResult("t1", root, config, StopReason.ITERATIONS, 1, 0.0, TreeStats())
    extractor = Extractor(make_client(Website()), imagined=True)
    out = asyncio.run(extractor.extract(result, Goal("t1", OBJECTIVE, (site,))))
    assert [target_action(e.messages) for e in out.valuable] == [goto.action]
    assert out.valuable[0].meta["terminal"] == "end_gate" and not out.dropped
