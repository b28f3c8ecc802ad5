"""TextUI builders: derived state transitions, teacher-written captions and functionality.

Teacher calls go through a scripted backend (exact control over every answer and error);
the last test asks the tiny random model end to end (garbage text, but typed outcomes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from websynthesis.backends.cache import CachedBackend
from websynthesis.backends.types import Generation, GenerationRequest
from websynthesis.config import register_configs
from websynthesis.data.tasks import Task
from websynthesis.data.textui import (
    NO_CHANGE,
    Drop,
    ElementQuestion,
    TeacherSettings,
    caption_examples,
    check_answer,
    collect_pages,
    describe_change,
    element_questions,
    function_examples,
    transition_examples,
)
from websynthesis.data.transitions import Transition
from websynthesis.roles.client import ModelClient
from websynthesis.roles.prompts import render
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import diff_trees, parse_axtree

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

HOME = (
    "Tab 0 (current): Paper Lantern Books\n\n"
    "[1] RootWebArea 'Paper Lantern Books' focused: True\n"
    "\t[12] searchbox 'Search the catalogue' required: False\n"
    "\t[13] button 'Search'\n"
    "\t[21] link 'Fiction'\n"
    "\t[22] link 'My account'\n"
    "\t[23] button ''\n"
    "\t[30] heading 'Staff picks'\n"
    "\t[31] link 'The Dispossessed'"
)
TYPED = HOME.replace(
    "\t[12] searchbox 'Search the catalogue' required: False",
    "\t[12] searchbox 'Search the catalogue' focused: True required: False\n"
    "\t\t[50] StaticText 'le guin'",
)
FICTION = (
    "Tab 0 (current): Fiction\n\n"
    "[1] RootWebArea 'Fiction' focused: True\n"
    "\t[40] heading 'Fiction'\n"
    "\t[41] link 'A Wizard of Earthsea'\n"
    "\t[42] link 'Dune'"
)
BROKEN = "Tab 0 (current): Oops\n\n[1] RootWebArea 'Oops'\n\t\t\t[2] link 'too deep'"


def step(before: str, action: str, after: str, **kw: object) -> Transition:
    return Transition(before, parse_action(action), after, **kw)  # type: ignore[arg-type]


TRANSITIONS = [
    step(HOME, "click [21]", FICTION, task_id="t1", source="evaluate"),
    step(HOME, "type [12] [le guin] [0]", TYPED, task_id="t1", source="evaluate"),
    step(HOME, "scroll [down]", HOME, task_id="t1", source="evaluate"),
]


class Scripted:
    """A backend answering ``reply(request)``; records every batch it is sent."""

    cache_identity: ClassVar[dict[str, str]] = {"kind": "scripted"}

    def __init__(self, reply: Callable[[GenerationRequest], str | Generation]) -> None:
        self.reply = reply
        self.calls: list[list[GenerationRequest]] = []

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append(list(requests))
        out = []
        for request in requests:
            answer = self.reply(request)
            if isinstance(answer, str):
                answer = Generation([answer], 10, 5, ["stop"])
            out.append(answer)
        return out

    def close(self) -> None:
        pass


GOOD = "A bookshop's home page with a catalogue search, links to genres and staff picks."


def page_title(request: GenerationRequest) -> str:
    return request.messages[-1]["content"].split("Tab 0 (current): ", 1)[1].split("\n", 1)[0]


# --- state transition: derived, no model ------------------------------------------------


def test_state_transition_targets_are_the_rendered_diff() -> None:
    counts: Counter[str] = Counter()
    examples = transition_examples(
        TRANSITIONS, observation_chars=None, max_diff_chars=10_000, counts=counts
    )
    assert len(examples) == 3 and counts["kept"] == 3
    for t, example in zip(TRANSITIONS, examples, strict=True):
        system, user, answer = (m["content"] for m in example.messages)
        diff = diff_trees(parse_axtree(t.observation), parse_axtree(t.next_observation))
        assert answer == (diff.render() or NO_CHANGE)
        assert system == render("textui_system")
        assert user == render(
            "textui_transition_user", page=HOME, action=t.action.to_string(), no_change=NO_CHANGE
        )
        assert example.meta == {
            "task_id": "t1",
            "source": "evaluate",
            "imagined": False,
            "action": t.action.to_string(),
        }
    assert examples[2].messages[-1]["content"] == NO_CHANGE
    assert examples[1].messages[-1]["content"] == (
        "+ [50] StaticText 'le guin'\n"
        "~ [12] searchbox 'Search the catalogue' focused: True required: False: +focused: True"
    )


def test_a_long_diff_is_cut_at_a_line_with_a_count() -> None:
    before, after = parse_axtree(HOME), parse_axtree(FICTION)
    lines = diff_trees(before, after).render().split("\n")
    cut = describe_change(before, after, max_chars=80)
    kept = cut.split("\n")[:-1]
    assert kept == lines[: len(kept)] and 0 < len(kept) < len(lines)
    assert cut.split("\n")[-1] == f"... ({len(lines) - len(kept)} more changes)"
    assert len("\n".join(kept)) <= 80


def test_malformed_and_repeated_transitions_are_dropped_and_counted() -> None:
    counts: Counter[str] = Counter()
    found = [*TRANSITIONS, TRANSITIONS[0], step(HOME, "click [21]", BROKEN)]
    examples = transition_examples(
        found, observation_chars=None, max_diff_chars=4000, counts=counts
    )
    assert len(examples) == 3
    assert counts == Counter({"kept": 3, "dropped/duplicate": 1, "dropped/malformed": 1})


def test_the_page_is_cut_as_the_policy_sees_it() -> None:
    examples = transition_examples(
        TRANSITIONS[:1], observation_chars=150, max_diff_chars=4000, counts=Counter()
    )
    user = examples[0].messages[1]["content"]
    assert "more elements truncated" in user and "The Dispossessed" not in user


# --- pages and elements -----------------------------------------------------------------


def test_pages_are_distinct_and_valid() -> None:
    counts: Counter[str] = Counter()
    tasks = [Task("t1", "find a book", state=HOME), Task("t2", "other", state=HOME)]
    pages = collect_pages(tasks, [*TRANSITIONS, step(HOME, "click [21]", BROKEN)], counts)
    assert [p.tree.render() for p in pages] == [HOME, FICTION, TYPED]
    assert [p.source for p in pages] == ["tasks", "evaluate", "evaluate"]
    assert counts == Counter({"pages": 3, "pages_malformed": 1})


def test_element_questions_use_observed_effects_then_a_seeded_draw() -> None:
    pages = collect_pages([], TRANSITIONS, Counter())

    def ask(seed: int) -> list[ElementQuestion]:
        return element_questions(
            pages, TRANSITIONS, per_page=3, observation_chars=None, max_diff_chars=4000, seed=seed
        )

    questions = ask(0)
    home = [q for q in questions if q.page.tree.render() == HOME]
    assert [q.node.id for q in home[:2]] == ["21", "12"]  # acted on, in transition order
    assert home[0].action == parse_action("click [21]")
    assert home[0].change == describe_change(parse_axtree(HOME), parse_axtree(FICTION), 4000)
    assert len(home) == 3 and home[2].action is None
    assert home[2].node.id in {"13", "22", "31"}  # named, interactive, not asked yet
    fiction = [q.node.id for q in questions if q.page.tree.render() == FICTION]
    assert sorted(fiction) == ["41", "42"]  # only two named interactive elements
    assert [q.node.id for q in ask(0)] == [q.node.id for q in questions]  # seeded
    draws = {tuple(q.node.id for q in ask(seed)) for seed in range(8)}
    assert len(draws) > 1


def test_element_questions_only_ask_about_elements_on_the_shown_page() -> None:
    pages = collect_pages([Task("t", "x", state=HOME)], [], Counter())
    questions = element_questions(
        pages, [], per_page=10, observation_chars=220, max_diff_chars=4000, seed=0
    )
    shown = {n.id for n in parse_axtree(HOME).truncate(max_chars=220).nodes}
    assert shown == {"1", "12", "13", "21"}
    assert sorted(q.node.id for q in questions) == ["12", "13", "21"]


# --- teacher-written: captions and functionality ----------------------------------------


def test_captions_are_teacher_written_batched_and_replayed_from_the_cache(tmp_path: Path) -> None:
    pages = collect_pages([], TRANSITIONS, Counter())
    settings = TeacherSettings(batch_size=2, max_new_tokens=64)

    def build(backend: Scripted) -> list[object]:
        client = ModelClient(CachedBackend(backend, tmp_path / "teacher.sqlite"), {})
        counts: Counter[str] = Counter()
        found = caption_examples(pages, client, settings, observation_chars=None, counts=counts)
        assert counts == Counter({"kept": 3})
        return found

    backend = Scripted(lambda request: f"{GOOD} ({page_title(request)})")
    examples = build(backend)
    assert [len(batch) for batch in backend.calls] == [2, 1]
    request = backend.calls[0][0]
    assert request.messages == (
        {"role": "system", "content": render("textui_teacher_system")},
        {"role": "user", "content": render("textui_caption_teacher", page=HOME)},
    )
    assert request.sampling.max_new_tokens == 64 and request.sampling.seed is None
    assert request.grammar is None and request.role == "dense_caption"
    first = examples[0]
    assert first.messages == (  # type: ignore[attr-defined]
        {"role": "system", "content": render("textui_system")},
        {"role": "user", "content": render("textui_caption_user", page=HOME)},
        {"role": "assistant", "content": f"{GOOD} (Paper Lantern Books)"},
    )
    again = Scripted(lambda request: "never asked")
    assert build(again) == examples and again.calls == []


def test_unusable_teacher_answers_are_dropped_with_typed_reasons() -> None:
    tree_copy = "[1] RootWebArea 'Books'\n\t[21] link 'Fiction'"
    answers: dict[str, str | Generation] = {
        "a": GOOD,
        "b": "   ",
        "c": "Too short.",
        "d": f"Here it is:\n{tree_copy}",
        "e": "$$ 123-456-789 ### 0.00 %% 42 ** [] {} 1234",
        "f": Generation([GOOD], finish_reasons=["length"]),
        "g": Generation([], error="rate_limit: slow down"),
        "h": f"  {GOOD}\n",
    }
    pages = collect_pages(
        [Task(k, "x", state=HOME.replace("Paper Lantern Books", k)) for k in answers], [], Counter()
    )
    client = ModelClient(Scripted(lambda request: answers[page_title(request)]), {})
    counts: Counter[str] = Counter()
    examples = caption_examples(
        pages, client, TeacherSettings(), observation_chars=None, counts=counts
    )
    assert [e.meta["task_id"] for e in examples] == ["a", "h"]
    assert all(e.messages[-1]["content"] == GOOD for e in examples)
    assert counts == Counter(
        {"kept": 2, "dropped/empty": 1, "dropped/too_short": 1, "dropped/copies_tree": 1,
         "dropped/not_prose": 1, "dropped/truncated": 1, "dropped/backend_error": 1}
    )  # fmt: skip
    stats = client.stats.to_dict()["dense_caption"]
    assert stats["requests"] == stats["samples"] == 8 and stats["truncated"] == 1
    assert stats["final"] == {
        "ok": 2, "empty": 1, "too_short": 1, "copies_tree": 1, "not_prose": 1,
        "truncated": 1, "backend_error": 1,
    }  # fmt: skip


def test_a_backend_that_raises_fails_its_batch_not_the_build() -> None:
    class Exploding(Scripted):
        async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
            raise ConnectionError("server gone")

    pages = collect_pages([Task("t", "x", state=HOME)], [], Counter())
    client = ModelClient(Exploding(lambda request: GOOD), {})
    counts: Counter[str] = Counter()
    examples = caption_examples(
        pages, client, TeacherSettings(), observation_chars=None, counts=counts
    )
    assert examples == [] and counts == Counter({"dropped/backend_error": 1})


def test_sampled_teacher_requests_are_seeded_by_prompt() -> None:
    pages = collect_pages([Task("t", "x", state=HOME)], TRANSITIONS, Counter())
    backend = Scripted(lambda request: GOOD)
    client = ModelClient(backend, {}, seed=3)
    settings = TeacherSettings(temperature=0.7)
    for _ in range(2):
        caption_examples(pages, client, settings, observation_chars=None, counts=Counter())
    seeds = [[r.sampling.seed for r in batch] for batch in backend.calls]
    assert seeds[0] == seeds[1] and None not in seeds[0] and len(set(seeds[0])) == 3


def test_functionality_prompts_carry_the_element_and_its_observed_effect() -> None:
    pages = collect_pages([], TRANSITIONS, Counter())
    questions = element_questions(
        pages, TRANSITIONS, per_page=2, observation_chars=None, max_diff_chars=4000, seed=0
    )
    backend = Scripted(lambda request: "It opens the list of fiction books in the catalogue.")
    counts: Counter[str] = Counter()
    examples = function_examples(
        questions, ModelClient(backend, {}), TeacherSettings(), observation_chars=None,
        counts=counts,
    )  # fmt: skip
    assert len(examples) == len(questions) == counts["kept"]
    teacher_user = backend.calls[0][0].messages[1]["content"]
    assert teacher_user == render(
        "textui_function_teacher",
        page=HOME,
        element="[21] link 'Fiction'",
        surroundings=parse_axtree(HOME).highlight("21").render(),
        action="click [21]",
        change=questions[0].change,
    )
    assert "OBSERVED EFFECT" in teacher_user
    assert examples[0].messages[1]["content"] == render(
        "textui_function_user", page=HOME, element="[21] link 'Fiction'"
    )
    assert examples[0].meta == {
        "task_id": "t1", "source": "evaluate", "element": "21", "observed": True,
    }  # fmt: skip
    unobserved = [q for q in questions if q.action is None]
    index = questions.index(unobserved[0])
    assert "OBSERVED EFFECT" not in backend.calls[0][index].messages[1]["content"]


def test_answer_checks() -> None:
    assert check_answer(GOOD, False, 20) is None
    assert check_answer(GOOD, True, 20) is Drop.TRUNCATED
    assert check_answer("[5] link 'x' is here", False, 5) is None  # one tree line is a mention
    assert check_answer("[5] link 'x'\n[6] link 'y' and more", False, 5) is Drop.COPIES_TREE
    assert check_answer(f"{GOOD} \ufffd", False, 5) is Drop.NOT_PROSE


# --- end to end on the tiny model -------------------------------------------------------


@pytest.mark.slow
def test_tiny_teacher_end_to_end_gives_typed_outcomes(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Random weights write garbage: whatever comes back is typed, counted and never raises."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="synthesize",
            overrides=[
                "model=tiny",
                "logger=none",
                f"paths.cache_dir={tiny_model_path.parents[1]}",
                "model.backend.device=cpu",
            ],
        )
    GlobalHydra.instance().clear()
    backend = CachedBackend(instantiate(cfg.model.backend), tmp_path / "teacher.sqlite")
    client = ModelClient.from_config(cfg.model, backend=backend)
    try:
        pages = collect_pages([Task("t", "x", state=HOME)], TRANSITIONS, Counter())
        settings = TeacherSettings(max_new_tokens=24, min_chars=5)
        counts: Counter[str] = Counter()
        examples = caption_examples(pages, client, settings, observation_chars=3000, counts=counts)
        assert sum(counts.values()) == len(pages) == 3 and counts["kept"] == len(examples)
        for example in examples:
            assert check_answer(example.messages[-1]["content"], False, 5) is None
        final = client.stats.to_dict()["dense_caption"]["final"]
        assert sum(final.values()) == 3 and final.get("ok", 0) == len(examples)
        replay: Counter[str] = Counter()
        again = caption_examples(pages, client, settings, observation_chars=3000, counts=replay)
        assert again == examples and replay == counts and backend.stats.hits == 3
    finally:
        client.close()
