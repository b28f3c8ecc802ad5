"""Truncation, the acted-on highlight, element matching and tree diffs."""

from __future__ import annotations

import pytest

from websynthesis.web.observation import (
    AXTree,
    Score,
    compare_trees,
    diff_trees,
    parse_axtree,
)

PAGE = (
    "Tab 0 (current): Shop\n"
    "\n"
    "[1] RootWebArea 'Shop' focused: True\n"
    "\t[2] navigation ''\n"
    "\t\t[a3] link 'Home'\n"
    "\t\t[a4] link 'Men'\n"
    "\t\t[a5] link 'Women'\n"
    "\t\t[a6] link 'Kids'\n"
    "\t\t[a7] link 'Sale'\n"
    "\t\t\t[8] StaticText '50%'\n"
    "\t\t[a9] link 'Gifts'\n"
    "\t\t[a10] link 'Brands'\n"
    "\t[11] main ''\n"
    "\t\t[12] textbox 'Search' focused: True\n"
    "\t\t[13] button 'Go'\n"
)


@pytest.fixture
def tree() -> AXTree:
    return parse_axtree(PAGE)


# --- truncation -----------------------------------------------------------------------


def test_truncate_returns_the_tree_itself_when_it_fits(tree: AXTree) -> None:
    assert tree.truncate(max_chars=len(PAGE)) is tree
    assert tree.truncate(max_tokens=10_000, count_tokens=len) is tree


def test_truncate_by_chars_drops_the_end_and_marks_it(tree: AXTree) -> None:
    cut = tree.truncate(max_chars=150)
    text = cut.render()
    assert len(text) <= 150
    assert text == (
        "Tab 0 (current): Shop\n\n"
        "[1] RootWebArea 'Shop' focused: True\n"
        "\t[2] navigation ''\n"
        "\t\t[a3] link 'Home'\n"
        "\t\t[a4] link 'Men'\n"
        "... (9 more elements truncated)\n"
    )
    assert cut.truncated == 9 and cut.errors == [] and cut.header == tree.header
    assert parse_axtree(text).truncated == 9


def test_truncate_by_tokens(tree: AXTree) -> None:
    def words(text: str) -> int:
        return len(text.split())

    cut = tree.truncate(max_tokens=30, count_tokens=words)
    assert words(cut.render()) <= 30
    keep = len(cut.nodes)
    longer = AXTree.from_nodes(
        tree.nodes[: keep + 1], header=tree.header, trailer="\n", truncated=12 - keep
    )
    assert words(longer.render()) > 30  # the cut is as long as the budget allows
    both = tree.truncate(max_chars=150, max_tokens=20, count_tokens=words)
    assert len(both.render()) <= 150 and words(both.render()) <= 20


def test_truncate_keeps_the_root_even_over_budget(tree: AXTree) -> None:
    cut = tree.truncate(max_chars=5)
    assert [node.id for node in cut.nodes] == ["1"]
    assert cut.truncated == 12


def test_truncate_twice_adds_up(tree: AXTree) -> None:
    twice = tree.truncate(max_chars=250).truncate(max_chars=150)
    assert len(twice.nodes) + twice.truncated == len(tree.nodes)


def test_truncate_needs_a_budget(tree: AXTree) -> None:
    with pytest.raises(ValueError):
        tree.truncate()
    with pytest.raises(ValueError):
        tree.truncate(max_tokens=5)


# --- highlight ------------------------------------------------------------------------


def test_highlight_shows_ancestors_nearest_siblings_and_children(tree: AXTree) -> None:
    view = tree.highlight("a7", siblings=4)
    assert view.render() == (
        "[1] RootWebArea 'Shop' focused: True\n"
        "\t[2] navigation ''\n"
        "\t\t[a5] link 'Women'\n"
        "\t\t[a6] link 'Kids'\n"
        "\t\t[a7] link 'Sale'\n"
        "\t\t\t[8] StaticText '50%'\n"
        "\t\t[a9] link 'Gifts'\n"
        "\t\t[a10] link 'Brands'\n"
    ).rstrip("\n")
    assert view.errors == [] and view.header is None


def test_highlight_takes_more_siblings_from_one_side_at_an_edge(tree: AXTree) -> None:
    view = tree.highlight("a3", siblings=3, max_children=0)
    assert [node.id for node in view.nodes] == ["1", "2", "a3", "a4", "a5", "a6"]


def test_highlight_of_the_root_and_child_limit(tree: AXTree) -> None:
    view = tree.highlight("1", max_children=1)
    assert [node.id for node in view.nodes] == ["1", "2"]


def test_highlight_reindents_relative_to_the_root() -> None:
    deep = parse_axtree(
        "[r] RootWebArea 'x'\n\t[g] group ''\n\t\t[b] button 'Ok'\n\t\t[c] link 'No'"
    )
    view = deep.highlight("c", siblings=0)
    assert view.render() == "[r] RootWebArea 'x'\n\t[g] group ''\n\t\t[c] link 'No'"


def test_highlight_unknown_id_raises(tree: AXTree) -> None:
    with pytest.raises(KeyError):
        tree.highlight("nope")


# --- element match --------------------------------------------------------------------


def test_compare_identical_trees_is_perfect(tree: AXTree) -> None:
    match = compare_trees(tree, tree)
    assert match.with_id == Score(1.0, 1.0, 1.0, 13, 13, 13)
    assert match.without_id.f1 == 1.0


def test_compare_counts_ids_and_content_separately() -> None:
    ref = parse_axtree("[1] RootWebArea 'x'\n\t[2] link 'a'\n\t[3] link 'a'\n\t[4] button 'b'")
    pred = parse_axtree("[1] RootWebArea 'x'\n\t[9] link 'a'\n\t[4] button 'c'")
    match = compare_trees(pred, ref)
    assert (match.with_id.matched, match.with_id.predicted, match.with_id.reference) == (1, 3, 4)
    assert match.with_id.precision == pytest.approx(1 / 3)
    assert match.with_id.recall == pytest.approx(1 / 4)
    assert match.with_id.f1 == pytest.approx(2 / 7)
    assert match.without_id.matched == 2  # the root and one of the two 'a' links


def test_compare_with_empty_trees() -> None:
    empty, tree = parse_axtree(""), parse_axtree("[1] RootWebArea 'x'")
    assert compare_trees(empty, empty).with_id.f1 == 1.0
    assert compare_trees(empty, tree).with_id == Score(0.0, 0.0, 0.0, 0, 0, 1)
    assert compare_trees(tree, empty).with_id == Score(0.0, 0.0, 0.0, 0, 1, 0)


# --- diff -----------------------------------------------------------------------------


def test_diff_finds_added_removed_and_changed() -> None:
    before = parse_axtree(
        "[1] RootWebArea 'Shop'\n\t[2] textbox 'Search' focused: True\n"
        "\t[3] button 'Go'\n\t[4] link 'Cart (0)'\n\tStaticText 'Welcome'"
    )
    after = parse_axtree(
        "[1] RootWebArea 'Shop'\n\t[2] textbox 'Search' focused: False required: True\n"
        "\t[4] link 'Cart (1)'\n\t[5] alert 'Added to cart'\n\tStaticText 'Welcome'"
    )
    diff = diff_trees(before, after)
    assert [node.id for node in diff.removed] == ["3"]
    assert [node.id for node in diff.added] == ["5"]
    assert [(c.before.id, c.fields) for c in diff.changed] == [("2", ("props",)), ("4", ("name",))]
    assert diff.render() == (
        "- [3] button 'Go'\n"
        "+ [5] alert 'Added to cart'\n"
        "~ [2] textbox 'Search' focused: False required: True: focused: True -> False; "
        "+required: True\n"
        "~ [4] link 'Cart (1)': name 'Cart (0)' -> 'Cart (1)'"
    )
    assert diff


def test_diff_of_identical_trees_is_empty(tree: AXTree) -> None:
    diff = diff_trees(tree, parse_axtree(PAGE))
    assert not diff
    assert diff.render() == ""


def test_diff_reports_role_changes_and_idless_elements() -> None:
    before = parse_axtree("[a1] RootWebArea 'x'\n\t[a2] button 'Menu'\n\tStaticText 'old'")
    after = parse_axtree("[a1] RootWebArea 'x'\n\t[a2] menuitem 'Menu'\n\tStaticText 'new'")
    diff = diff_trees(before, after)
    assert [(c.after.id, c.fields) for c in diff.changed] == [("a2", ("role",))]
    assert diff.changed[0].render() == "~ [a2] menuitem 'Menu': role button -> menuitem"
    assert [n.name for n in diff.removed] == ["old"]
    assert [n.name for n in diff.added] == ["new"]


def test_highlight_rejects_negative_limits(tree: AXTree) -> None:
    with pytest.raises(ValueError):
        tree.highlight("a7", siblings=-1)
