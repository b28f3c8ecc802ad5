"""Grammar-constrained decoding: the role grammars, per-row masks, and the budget wrap-up.

The key acceptance check: with the grammar, even the random tiny model answers with
actions that parse and only name ids on the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xgrammar as xgr

from websynthesis.backends.constraints import GrammarCompiler
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.types import Generation, GenerationRequest, Sampling, generate
from websynthesis.roles.client import Role, RoleSettings
from websynthesis.roles.grammar import (
    a11y_grammar,
    action_grammar,
    go_back_grammar,
    judge_grammar,
    score_grammar,
)
from websynthesis.roles.prompts import PolicyInput
from websynthesis.web.actions import (
    ANSWER_PHRASE,
    ActionKind,
    ActionParseError,
    extract_action,
    format_response,
    parse_action,
)
from websynthesis.web.observation import parse_axtree

IDS = ["12", "7", "164", "a51"]
ELEMENT_KINDS = {ActionKind.CLICK, ActionKind.HOVER, ActionKind.TYPE}


@pytest.fixture(scope="module")
def backend(tiny_model_path: Path) -> LocalBackend:
    return LocalBackend(str(tiny_model_path))


@pytest.fixture(scope="module")
def compiler(backend: LocalBackend) -> GrammarCompiler:
    return backend.grammars


def accepts(compiler: GrammarCompiler, grammar: str, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiler.compile(grammar).grammar)
    return matcher.accept_string(text) and matcher.is_completed()


def ask(grammar: str | None, n: int, max_new_tokens: int, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": "What's the next action?"},),
        sampling=Sampling(temperature=1.0, n=n, seed=seed, max_new_tokens=max_new_tokens),
        grammar=grammar,
    )


def valid_actions(result: Generation, ids: list[str]) -> int:
    """How many texts hold an action that parses and, if it names an element, a known one."""
    valid = 0
    for text in result.texts:
        try:
            action = extract_action(text)
        except ActionParseError:
            continue
        valid += action.kind not in ELEMENT_KINDS or action.target in ids
    return valid


@pytest.mark.parametrize(
    "action",
    [
        "click [12]",
        "hover [a51]",
        "type [164] [hp inkjet fax] [1]",
        "type [7] [it's 50% off!] [0]",
        "press [Control+a]",
        "scroll [down]",
        "goto [https://example.com/a?b=1]",
        "go_back",
        "go_forward",
        "new_tab",
        "tab_focus [2]",
        "close_tab",
        "stop [$279.49]",
        "stop []",
    ],
)
def test_action_grammar_accepts_canonical_responses(compiler: GrammarCompiler, action: str) -> None:
    text = format_response("The search box is [164].", extract_action(f"```{action}```"))
    assert accepts(compiler, action_grammar(IDS), text)
    assert str(extract_action(text)) == action


@pytest.mark.parametrize(
    "action",
    [
        "click [13]",  # not on the page
        "click [Submit]",
        "type [12] [] [1]",  # nothing to type
        "type [12] [a] [2]",
        "scroll [left]",
        "stop [a ] b]",
        "goto [ftp://x]",
    ],
)
def test_action_grammar_rejects(compiler: GrammarCompiler, action: str) -> None:
    assert not accepts(compiler, action_grammar(IDS), f"Hm. {ANSWER_PHRASE} ```{action}```")


def test_action_grammar_variants(compiler: GrammarCompiler) -> None:
    bare = f"{ANSWER_PHRASE} ```go_back```"
    assert accepts(compiler, action_grammar(IDS, allow_reasoning=False), bare)
    assert not accepts(compiler, action_grammar(IDS, allow_reasoning=False), "Hm. " + bare)
    assert not accepts(compiler, action_grammar([]), f"{ANSWER_PHRASE} ```click [12]```")
    assert accepts(compiler, action_grammar([]), bare)
    long_text = "x" * 21
    assert not accepts(
        compiler,
        action_grammar(IDS, max_text_chars=20),
        f"{ANSWER_PHRASE} ```stop [{long_text}]```",
    )


def test_other_role_grammars(compiler: GrammarCompiler) -> None:
    assert accepts(compiler, score_grammar(1, 5), "Reason: good progress.\nScore: 4")
    assert not accepts(compiler, score_grammar(1, 5), "Reason: good.\nScore: 6")
    assert accepts(compiler, judge_grammar(), "Reason: the answer matches.\nScore: 0.5")
    assert not accepts(compiler, judge_grammar(), "Reason: x\nScore: 0.7")
    page = "[1] RootWebArea 'Shop' focused: True\n\t[5] link \"Kid's a<b\"\n\t\t[9] img 'x'"
    assert accepts(compiler, a11y_grammar(), f"<a11y>\n{page}\n</a11y>")
    assert accepts(compiler, a11y_grammar(["a5"]), "<a11y>\n[a5] RootWebArea ''\n</a11y>")
    skipped_level = "<a11y>\n[1] RootWebArea 'Shop'\n\t\t[5] link 'a'\n</a11y>"
    assert not accepts(compiler, a11y_grammar(), skipped_level)
    assert not accepts(compiler, a11y_grammar(), "<a11y>\n[1] RootWebArea\n</a11y>")
    assert not accepts(compiler, a11y_grammar(), "<a11y>\n[b7] RootWebArea ''\n</a11y>")
    with pytest.raises(ValueError):
        score_grammar(5, 1)


def test_compile_errors_are_value_errors(compiler: GrammarCompiler) -> None:
    with pytest.raises(ValueError, match="undefined"):
        compiler.compile("root ::= undefined")
    with pytest.raises(ValueError):
        compiler.compile("root ::= [")


def test_random_model_always_produces_valid_actions(backend: LocalBackend) -> None:
    """The acceptance check: 16 samples at T=1 within 128 tokens, all valid, all finished."""
    grammar = action_grammar(IDS, max_text_chars=12)
    result = generate(backend, [ask(grammar, n=16, max_new_tokens=128)])[0]
    assert result.ok, result.error
    assert valid_actions(result, IDS) == 16
    assert result.finish_reasons == ["stop"] * 16
    assert all(not t.startswith(ANSWER_PHRASE) for t in result.texts)  # it did reason first
    unconstrained = generate(backend, [ask(None, n=16, max_new_tokens=128)])[0]
    assert valid_actions(unconstrained, IDS) == 0


def test_wrap_up_is_what_finishes_in_budget(backend: LocalBackend) -> None:
    """Without its wrap-up line the grammar still holds, but rambling rows run out of tokens."""
    grammar = action_grammar(IDS, max_text_chars=8)
    without = "\n".join(line for line in grammar.splitlines() if not line.startswith("#"))
    wrapped, bare = generate(backend, [ask(grammar, 8, 112), ask(without, 8, 112)])
    assert wrapped.finish_reasons == ["stop"] * 8 and valid_actions(wrapped, IDS) == 8
    assert "length" in bare.finish_reasons


def test_each_row_follows_its_own_grammar(backend: LocalBackend) -> None:
    only_12 = action_grammar(["12"], max_text_chars=8)
    only_7 = action_grammar(["7"], max_text_chars=8)
    score = score_grammar(1, 5)
    free = ask(None, 2, 24, seed=3)
    results = generate(
        backend, [ask(only_12, 4, 80), free, ask(score, 4, 40), ask(only_7, 4, 80, seed=1)]
    )
    assert valid_actions(results[0], ["12"]) == 4 and valid_actions(results[3], ["7"]) == 4
    assert all(re.fullmatch(r"Reason: [^\n]*\nScore: [1-5]", t) for t in results[2].texts)
    assert results[1].texts == generate(backend, [free])[0].texts  # unconstrained rows untouched


def test_judge_and_world_model_shapes(backend: LocalBackend) -> None:
    tree = a11y_grammar(["12", "a5"])
    judge, world = generate(backend, [ask(judge_grammar(), 4, 24), ask(tree, 4, 256)])
    assert all(re.fullmatch(r"Reason: [^\n]*\nScore: (0|0\.5|1)", t) for t in judge.texts)
    assert world.finish_reasons == ["stop"] * 4
    for text in world.texts:
        inner = re.fullmatch(r"<a11y>\n(.*)\n</a11y>", text, re.S)
        assert inner, text
        errors = {e.kind.value for e in parse_axtree(inner.group(1)).errors}
        assert errors <= {"duplicate_id"}, (errors, text)  # a grammar cannot count ids


def test_type_only_into_typeable_ids_and_goto_only_to_allowed_prefixes(
    compiler: GrammarCompiler,
) -> None:
    grammar = action_grammar(
        ["12", "13"], typeable_ids=["13"], goto_prefixes=["http://localhost:7000/"]
    )
    answer = "In summary, the next action I will perform is ```{}```"
    assert accepts(compiler, grammar, "Go." + answer.format("type [13] [kettle] [1]"))
    assert not accepts(compiler, grammar, "Go." + answer.format("type [12] [kettle] [1]"))
    assert accepts(compiler, grammar, "Go." + answer.format("click [12]"))
    assert accepts(compiler, grammar, "Go." + answer.format("goto [http://localhost:7000/a]"))
    assert not accepts(compiler, grammar, "Go." + answer.format("goto [http://evil.com/]"))
    no_goto = action_grammar(["12"], goto_prefixes=[])
    assert not accepts(compiler, no_goto, "Go." + answer.format("goto [http://localhost:7000/]"))


DATE_PAGE = """Tab 0 (current): Enter Date Task

[RA0] RootWebArea 'Enter Date Task' focused: True
\t[14] Date ''
\t\t[TD14] spinbutton 'Month' value: 0 valuemin: 1 valuemax: 12
\t\t\t[TE14] StaticText 'mm'
\t\t[TQ14] button 'Show date picker' hasPopup: menu
\t[15] button 'Submit'
"""


def test_the_policy_may_type_into_a_date_input(compiler: GrammarCompiler) -> None:
    page = parse_axtree(DATE_PAGE)
    grammar = Role("policy", RoleSettings("policy", constrained=True)).grammar(
        PolicyInput("Enter 02/04/2012 as the date and hit submit.", page)
    )
    answer = "Type it. In summary, the next action I will perform is ```{}```"
    assert accepts(compiler, grammar, answer.format("type [14] [2012-02-04] [0]"))
    assert not accepts(compiler, grammar, answer.format("type [15] [2012-02-04] [0]"))
    assert parse_action("type [14] [2012-02-04] [0]").validate(page)


def test_go_back_grammar(compiler: GrammarCompiler) -> None:
    grammar = go_back_grammar()
    answer = "In summary, the next action I will perform is ```go_back```"
    assert accepts(compiler, grammar, "It does not help. " + answer)
    assert not accepts(
        compiler, grammar, "No. In summary, the next action I will perform is ```click [1]```"
    )


def test_the_action_grammar_presses_only_real_keys() -> None:
    import xgrammar as xgr
    from xgrammar import testing as xgr_testing

    from websynthesis.web.actions import ANSWER_PHRASE

    grammar = xgr.Grammar.from_ebnf(action_grammar(["5"], allow_reasoning=False))

    def writes(action: str) -> bool:
        return xgr_testing._is_grammar_accept_string(grammar, f"{ANSWER_PHRASE} ```{action}```")

    assert writes("press [Enter]") and writes("press [Control+a]") and writes("click [5]")
    assert writes("press [Control+Shift+ArrowLeft]")
    assert not writes("press [submitform]") and not writes("press [Entr]")
