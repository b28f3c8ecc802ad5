"""The world model's change format end to end: parser, grammar, role, training data, fidelity.

``model.roles.world_model.template=world_model_delta`` makes the world model answer with what
changed (``<changes>``), applied to the current page, or with a whole page for a navigation.
Callers (ModelWorld, WMLA, fidelity) still get the predicted page as an AXTree.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import xgrammar as xgr
from omegaconf import DictConfig

from websynthesis.backends.constraints import GrammarCompiler
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.types import Generation, GenerationRequest, Sampling, generate
from websynthesis.data.transitions import Transition
from websynthesis.data.world_model_data import change_target, target_text, world_model_examples
from websynthesis.evaluation.fidelity import evaluate_fidelity
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.roles.grammar import a11y_grammar, delta_grammar
from websynthesis.roles.parsing import Failure, Parsed, parse_world_model_delta
from websynthesis.roles.prompts import PromptStyle, WorldModelInput
from websynthesis.web.actions import parse_action
from websynthesis.web.observation import parse_axtree
from websynthesis.web.tree_delta import DeltaErrorKind, parse_delta

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

HOME = (
    "Tab 0 (current): Quiet Forum\n\n"
    "[1] RootWebArea 'Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[8] searchbox 'Search' required: False\n"
    "\t[9] link 'Log in'\n"
    "\t[20] heading 'Latest threads'\n"
    "\t[21] link 'Welcome, new members'\n"
    "\t[22] link 'Rules of the forum'\n"
    "\t[23] link 'Introduce yourself'"
)
TYPED = HOME.replace(
    "'Search' required: False", "'Search' focused: True required: False value: tea"
)
MENU = HOME.replace(
    "\t[20] heading", "\t[40] menu 'Account'\n\t\t[41] menuitem 'Sign up'\n\t[20] heading"
)
LOGIN = (
    "Tab 0 (current): Log in | Quiet Forum\n\n"
    "[1] RootWebArea 'Log in | Quiet Forum' focused: True\n"
    "\t[5] link 'Quiet Forum'\n"
    "\t[30] textbox 'Username' required: True\n"
    "\t[31] button 'Log in'"
)
ELSEWHERE = "Tab 0 (current): Wiki\n\n[70] RootWebArea 'Wiki' focused: True\n\t[71] link 'Main'"

DELTA = RoleSettings("world_model_delta", style=PromptStyle(observation_chars=2000))
WM_DELTA = Role("world_model", DELTA)


def question(page: str = HOME, action: str = "click [9]") -> WorldModelInput:
    return WorldModelInput(parse_axtree(page), parse_action(action))


def step(before: str, action: str, after: str) -> Transition:
    return Transition(before, parse_action(action), after, ())


# --- the parser -----------------------------------------------------------------------------

OK_ANSWERS = [
    ("<changes>\n</changes>", HOME),
    ("<changes></changes>", HOME),
    ("Nothing visible changes.\n<changes>\n\n</changes>", HOME),
    ("<changes>\n~ [8] searchbox 'Search' focused: True required: False value: tea\n</changes>",
     TYPED),
    ("```\n<changes>\n~ [8] searchbox 'Search' focused: True required: False value: tea\n"
     "</changes>\n```", TYPED),
    ("<CHANGES>\n+ after [9]\n[40] menu 'Account'\n\t[41] menuitem 'Sign up'\n</CHANGES>", MENU),
    ("<changes>\n```\n+ after [9]\n[40] menu 'Account'\n\t[41] menuitem 'Sign up'\n```\n"
     "</changes>", MENU),
    ("<changes>\nheader Tab 0 (current): Log in | Quiet Forum\n~ [1] RootWebArea 'Log in | "
     "Quiet Forum' focused: True\n- [8]\n- [9]\n- [20]\n- [21]\n- [22]\n- [23]\n+ after [5]\n"
     "[30] textbox 'Username' required: True\n[31] button 'Log in'\n</changes>", LOGIN),
    (f"The link opens another site.\n<a11y>\n{ELSEWHERE}\n</a11y>", ELSEWHERE),
    (f"<changes>\n- [8]\n</changes>\nOn second thought:\n<a11y>\n{ELSEWHERE}\n</a11y>",
     ELSEWHERE),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "page"), OK_ANSWERS)
def test_good_answers_give_the_next_page(answer: str, page: str) -> None:
    parsed = WM_DELTA.parse(answer, question())
    assert parsed.ok, (parsed.failure, parsed.reason, parsed.detail)
    assert parsed.value is not None and parsed.value.render() == page


BAD_ANSWERS = [
    ("", Failure.EMPTY, ""),
    ("  \n", Failure.EMPTY, ""),
    ("The page stays the same.", Failure.NO_TREE, ""),
    ("<changes>\n- [8]\n", Failure.BAD_DELTA, DeltaErrorKind.UNCLOSED),
    ("<changes>\n- [8]\nand the menu opens\n</changes>", Failure.BAD_DELTA,
     DeltaErrorKind.BAD_LINE),
    ("<changes>\n~ [8] searchbox Search\n</changes>", Failure.BAD_DELTA,
     DeltaErrorKind.BAD_ELEMENT),
    ("<changes>\n+ after [9]\n</changes>", Failure.BAD_DELTA, DeltaErrorKind.BAD_BLOCK),
    ("<changes>\nheader Log in\n</changes>", Failure.BAD_DELTA, DeltaErrorKind.BAD_HEADER),
    ("<changes>\n- [404]\n</changes>", Failure.BAD_DELTA, DeltaErrorKind.UNKNOWN_ID),
    ("<changes>\n+ in [1]\n[9] link 'Log in'\n</changes>", Failure.BAD_DELTA,
     DeltaErrorKind.ID_CLASH),
    ("<changes>\n- [1]\n</changes>", Failure.BAD_DELTA, DeltaErrorKind.ROOT_EDIT),
    ("<a11y>\n[1] RootWebArea 'x'\n\t\t[2] link 'y'\n</a11y>", Failure.MALFORMED_TREE,
     "depth_jump"),
    ("<changes>\n</changes>\n<a11y>\n[1] RootWebArea 'x'", Failure.MALFORMED_TREE,
     "unclosed_a11y"),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "failure", "reason"), BAD_ANSWERS)
def test_bad_answers_are_typed_failures(answer: str, failure: Failure, reason: str) -> None:
    parsed = WM_DELTA.parse(answer, question())
    assert (parsed.failure, parsed.reason) == (failure, str(reason)), parsed.detail
    assert parsed.raw == answer
    if failure is Failure.BAD_DELTA:
        assert parsed.value is None and parsed.detail.startswith("delta line ")


def test_a_change_to_a_damaged_page_is_a_soft_failure_with_the_page() -> None:
    damaged = parse_axtree("[1] RootWebArea 'x'\n\t[2] link 'a'\n\t[2] link 'b'\n\t[3] link 'c'")
    parsed = parse_world_model_delta("<changes>\n- [3]\n</changes>", damaged)
    assert parsed.failure is Failure.MALFORMED_TREE and parsed.reason == "duplicate_id"
    assert parsed.value is not None and len(parsed.value) == 3


def test_the_default_family_still_reads_whole_pages_only() -> None:
    whole = Role("world_model", RoleSettings("world_model"))
    assert whole.parse(target_text(parse_axtree(LOGIN)), question()).ok
    assert not whole.parse("<changes>\n</changes>", question()).ok
    assert whole.grammar(question()) is None  # unconstrained unless configured
    constrained = Role("world_model", RoleSettings("world_model", constrained=True))
    assert constrained.grammar(question()) == a11y_grammar(["1", "5", "8", "9", "20", "21",
                                                             "22", "23"])  # fmt: skip


def test_the_delta_family_has_its_own_prompt_and_grammar() -> None:
    system, user = WM_DELTA.messages(question())
    assert "<changes>" in system["content"] and "+ after [14]" in system["content"]
    assert "CURRENT PAGE:\n" + HOME in user["content"] and "click [9]" in user["content"]
    constrained = Role("world_model", RoleSettings("world_model_delta", constrained=True))
    grammar = constrained.grammar(question())
    assert grammar is not None and 'inner ::= "5" | "8" | "9"' in grammar  # the root is "1"


# --- the grammar ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(tiny_model_path: Path) -> LocalBackend:
    return LocalBackend(str(tiny_model_path), device="cpu")


@pytest.fixture(scope="module")
def compiler(backend: LocalBackend) -> GrammarCompiler:
    return backend.grammars


def accepts(compiler: GrammarCompiler, grammar: str, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiler.compile(grammar).grammar)
    return matcher.accept_string(text) and matcher.is_completed()


IDS = ["1", "5", "8", "9", "a51"]


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("<changes>\n</changes>", True),
        ("<changes>\nheader Tab 0 (current): Log in\n- [8]\n~ [a51] button 'Go' focused: True\n"
         "+ after [9]\n[40] menu 'Account' expanded: True\n\t[41] menuitem \"Sign-up's\"\n"
         "[42] link 'Help'\n+ in [1]\n[8] searchbox 'Search'\n</changes>", True),
        ("<a11y>\n[1] RootWebArea 'Shop'\n\t[5] link 'a'\n</a11y>", True),
        # typing adds the field's text line, with the id the browser layer gives text lines
        ("<changes>\n~ [9] textbox '' value: Ann\n+ in [9]\n[TB9] StaticText 'Ann'\n</changes>",
         True),
        ("<a11y>\n[1] RootWebArea 'Shop'\n\t[TAa51] StaticText 'a'\n</a11y>", True),
        ("<changes>\n+ in [9]\n[Ann] StaticText 'Ann'\n</changes>", False),  # no such id form
        ("<changes>\n- [1]\n</changes>", False),  # the root stays
        ("<changes>\n+ after [1]\n[40] x 'y'\n</changes>", False),  # and has no siblings
        ("<changes>\n- [404]\n</changes>", False),  # not on the page
        ("<changes>\n~ [404] link 'x'\n</changes>", False),
        ("<changes>\n+ in [5]\n</changes>", False),  # an insertion without elements
        ("<changes>\n+ in [5]\n\t[40] x 'y'\n</changes>", False),  # indented first line
        ("<changes>\n- [8]\nheader Tab 0 (current): x\n</changes>", False),  # the header first
        ("<changes>\n~ [5] link Name\n</changes>", False),
        ("<changes>\n- [8]</changes>", False),
    ],
)  # fmt: skip
def test_delta_grammar_accepts_what_the_reader_reads(
    compiler: GrammarCompiler, text: str, accepted: bool
) -> None:
    assert accepts(compiler, delta_grammar(IDS), text) is accepted
    if accepted and text.startswith("<changes>"):
        parse_delta(text)  # what the grammar lets through reads


def test_delta_grammar_on_small_pages_compiles(compiler: GrammarCompiler) -> None:
    for ids in ([], ["1"]):
        grammar = delta_grammar(ids)
        assert accepts(compiler, grammar, "<changes>\nheader Tab 0 (current): t\n</changes>")
        assert not accepts(compiler, grammar, "<changes>\n- [1]\n</changes>")
    assert accepts(compiler, delta_grammar(["1"]), "<changes>\n+ in [1]\n[2] x 'y'\n</changes>")
    assert accepts(compiler, delta_grammar(["7", "1"], root="1"), "<changes>\n- [7]\n</changes>")


def ask(grammar: str, n: int, max_new_tokens: int, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": "The next page?"},),
        sampling=Sampling(temperature=1.0, n=n, seed=seed, max_new_tokens=max_new_tokens),
        grammar=grammar,
    )


@pytest.mark.slow
def test_random_model_answers_always_read(backend: LocalBackend) -> None:
    """16 samples at T=1 within 320 tokens: every one ends in time and reads, as a change
    or as a page."""
    (result,) = generate(backend, [ask(delta_grammar(IDS), n=16, max_new_tokens=320, seed=1)])
    assert result.ok, result.error
    assert result.finish_reasons == ["stop"] * 16  # the wrap-up closed every answer in time
    forms = Counter()
    for text in result.texts:
        if text.startswith("<changes>"):
            parse_delta(text)
            forms["changes"] += 1
        else:
            inner = re.fullmatch(r"<a11y>\n(.*)\n</a11y>", text, re.S)
            assert inner, text
            errors = {e.kind.value for e in parse_axtree(inner.group(1)).errors}
            assert errors <= {"duplicate_id"}, (errors, text)  # a grammar cannot count ids
            forms["page"] += 1
    assert forms["changes"] > 0, forms


# --- the role on the tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(
    tiny_model_config: Callable[..., DictConfig], backend: LocalBackend
) -> Iterator[ModelClient]:
    """``model=tiny`` (its world-model budget, grammar on) with the changes family chosen by
    one override, as a run would."""
    model = tiny_model_config(
        "model.roles.world_model.template=world_model_delta",
        "model.roles.world_model.max_retries=2",
    )
    client = ModelClient.from_config(model, backend=backend)
    yield client


# What a grammar cannot rule out (random edits often name an element removed a line before):
# the edits are followed only when applied. Such answers are re-asked like any failure.
APPLY_KINDS = {DeltaErrorKind.UNKNOWN_ID, DeltaErrorKind.ID_CLASH}


@pytest.mark.slow
def test_the_tiny_world_model_answers_with_pages(tiny: ModelClient) -> None:
    role = tiny.role("world_model")
    assert role.settings.template == "world_model_delta" and role.settings.constrained
    inputs = [question(), question(LOGIN, "type [30] [ann] [0]"), question(MENU, "click [41]")]
    assert "<changes>" in (role.request(inputs[0]).grammar or "")
    rows = asyncio.run(tiny.sample("world_model", inputs, n=2))
    outcomes: list[Parsed] = [outcome for row in rows for outcome in row]
    assert len(outcomes) == 6
    for outcome in outcomes:
        if outcome.ok:
            assert outcome.value is not None and outcome.value.is_valid
        else:  # never a text that does not read: the grammar saw to that
            assert outcome.failure is Failure.BAD_DELTA, (outcome.failure, outcome.raw)
            assert outcome.reason in APPLY_KINDS, (outcome.reason, outcome.raw)
    assert any(outcome.ok for outcome in outcomes), [o.raw for o in outcomes]
    stats = tiny.stats.to_dict()["world_model"]
    assert sum(stats["final"].values()) == 6
    assert set(stats["reasons"]) <= {f"bad_delta/{kind}" for kind in APPLY_KINDS}


# --- training data --------------------------------------------------------------------------


def test_examples_follow_the_family_and_read_back_exactly() -> None:
    found = [step(HOME, "type [8] [tea] [0]", TYPED), step(HOME, "click [9]", MENU),
             step(HOME, "click [5]", HOME), step(HOME, "click [9]", ELSEWHERE)]  # fmt: skip
    counts: Counter[str] = Counter()
    examples = world_model_examples(found, WM_DELTA, counts=counts)
    assert [e.meta["target"] for e in examples] == ["changes", "changes", "changes", "page"]
    assert counts == Counter({"kept": 4, "target/changes": 3, "target/page": 1, "renumbered": 0})
    for t, example in zip(found, examples, strict=True):
        assert example.messages[:-1] == WM_DELTA.messages(
            question(t.observation, t.action.to_string())
        )
        target = example.messages[-1]["content"]
        parsed = WM_DELTA.parse(target, question(t.observation, t.action.to_string()))
        assert parsed.ok and parsed.value is not None
        assert parsed.value.render() == t.next_observation
    assert examples[2].messages[-1]["content"] == "<changes>\n</changes>"
    assert examples[0].messages[-1]["content"] == change_target(
        parse_axtree(HOME), parse_axtree(TYPED)
    )
    assert examples[3].messages[-1]["content"] == target_text(parse_axtree(ELSEWHERE))


def test_targets_that_do_not_read_back_are_dropped_and_counted() -> None:
    # A trailing blank after the last element is tolerated in a page, but no answer keeps it.
    spaced = TYPED + " "
    assert not parse_axtree(spaced).errors
    for role in (WM_DELTA, Role("world_model", RoleSettings("world_model"))):
        counts: Counter[str] = Counter()
        found = [step(HOME, "click [9]", MENU), step(HOME, "type [8] [tea] [0]", spaced)]
        kept = world_model_examples(found, role, counts=counts)
        assert len(kept) == 1 and counts["dropped/unreadable_target"] == 1, counts


# --- fidelity -------------------------------------------------------------------------------


class _Answers:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [Generation(texts=[self.answer] * r.sampling.n) for r in requests]

    def close(self) -> None:
        pass


def test_an_empty_change_scores_as_the_copy_baseline() -> None:
    transitions = [step(HOME, "type [8] [tea] [0]", TYPED), step(HOME, "click [9]", MENU),
                   step(HOME, "click [9]", LOGIN)]  # fmt: skip
    client = ModelClient(_Answers("<changes>\n</changes>"), {"world_model": WM_DELTA})  # type: ignore[arg-type]
    report = asyncio.run(evaluate_fidelity(client, transitions))
    assert report["model"] == report["copy_baseline"]
    assert report["failures"] == {} and report["no_prediction"] == 0
