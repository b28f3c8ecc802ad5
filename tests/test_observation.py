"""Unit tests of parsing, rendering and the node/tree API on small hand-written trees."""

from __future__ import annotations

import pytest

from websynthesis.web.observation import (
    AXNode,
    AXTree,
    Dialect,
    ErrorKind,
    Tab,
    parse_axtree,
)

PAGE = (
    "Tab 0: Home | Tab 1 (current): Women's Clothing | Tab 2: Cart\n"
    "\n"
    '[1] RootWebArea "Women\'s Clothing" focused: True\n'
    "\t[5] link '\\ue604 Home &amp; Garden'\n"
    "\t\t[6] img 'logo'\n"
    "\t[7] searchbox 'Search' autocomplete: both hasPopup: listbox required: False\n"
    "\t[8] main ''\n"
    "\t\t[9] StaticText 'path C:\\\\temp\\xa0now'\n"
    "\t\t[10] alert '' live: assertive atomic: True relevant: additions text\n"
    "\t\t[11] spinbutton 'Qty' required: False valuemin: 0 valuemax: 0 valuetext: \n"
    "\t\t[12] button 'Add' disabled: True\n"
    "\t[13] combobox 'Sort' hasPopup: menu expanded: False"
)


def kinds(tree: AXTree) -> list[ErrorKind]:
    return [error.kind for error in tree.errors]


def test_round_trip_is_exact_and_valid() -> None:
    tree = parse_axtree(PAGE)
    assert tree.render() == PAGE
    assert str(tree) == PAGE
    assert tree.errors == []
    assert tree.is_valid
    assert tree.dialect is Dialect.WEBARENA


@pytest.mark.parametrize("suffix", ["", "\n", "\n\n"])
def test_trailing_newlines_round_trip(suffix: str) -> None:
    text = "[1] RootWebArea 'x'\n\t[2] link 'y'" + suffix
    tree = parse_axtree(text)
    assert tree.render() == text
    assert tree.errors == []
    assert tree.trailer == suffix


def test_header_tabs_and_title() -> None:
    tree = parse_axtree(PAGE)
    assert tree.header == PAGE.split("\n")[0]
    assert tree.tabs == [
        Tab(0, "Home", False),
        Tab(1, "Women's Clothing", True),
        Tab(2, "Cart", False),
    ]
    assert tree.title == "Women's Clothing"
    assert parse_axtree("[1] RootWebArea 'x'").title is None


def test_node_fields_decode_names_and_props() -> None:
    tree = parse_axtree(PAGE)
    root = tree.get("1")
    assert root is not None
    assert (root.id, root.role, root.name, root.depth) == (
        "1",
        "RootWebArea",
        "Women's Clothing",
        0,
    )
    assert root.props == {"focused": "True"}
    assert root.parent is None
    assert [child.id for child in root.children] == ["5", "7", "8", "13"]
    link = tree.get("5")
    assert link is not None and link.name == "\ue604 Home &amp; Garden"
    text = tree.get("9")
    assert text is not None and text.name == "path C:\\temp\xa0now"
    assert text.parent is tree.get("8") and text.depth == 2
    alert = tree.get("10")
    assert alert is not None
    assert alert.props == {"live": "assertive", "atomic": "True", "relevant": "additions text"}
    spin = tree.get("11")
    assert spin is not None and spin.props["valuetext"] == ""
    assert tree.get("404") is None
    assert [node.id for node in tree.nodes] == [str(i) for i in (1, 5, 6, 7, 8, 9, 10, 11, 12, 13)]
    assert len(tree) == 10 and list(tree) == tree.nodes


def test_raw_characters_in_names_round_trip() -> None:
    # The corpus holds raw NBSPs that repr() would escape: the raw text must survive.
    text = "[1] RootWebArea 'a\xa0b'\n\t[2] generic '<span class=\"x\">y</span>'"
    tree = parse_axtree(text)
    assert tree.render() == text
    assert tree.nodes[0].name == "a\xa0b"


def test_interactive_roles() -> None:
    tree = parse_axtree(PAGE)
    # img is not actionable on its own; the disabled button cannot be acted on.
    assert [node.id for node in tree.interactive()] == ["5", "7", "11", "13"]


def test_nodes_are_read_only() -> None:
    node = parse_axtree(PAGE).nodes[1]
    with pytest.raises(AttributeError):
        node.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        node.new_attribute = 1  # type: ignore[attr-defined]


def test_constructed_nodes_render_canonically() -> None:
    root = AXNode("1", "RootWebArea", "Women's", {"focused": True})
    child = AXNode("a7", "button", "Go", {"required": "False"}, depth=1)
    text_node = AXNode(None, "StaticText", "tab\there", depth=2)
    tree = AXTree.from_nodes([root, child, text_node], header="Tab 0 (current): W")
    assert tree.render() == (
        "Tab 0 (current): W\n\n"
        '[1] RootWebArea "Women\'s" focused: True\n'
        "\t[a7] button 'Go' required: False\n"
        "\t\tStaticText 'tab\\there'"
    )
    assert kinds(tree) == [ErrorKind.MISSING_ID]  # WebArena lines always carry an id
    assert tree.errors[0].line == 5
    assert root.parent is None and root.children == []  # from_nodes copied, not adopted


def test_constructor_rejects_unrenderable_fields() -> None:
    with pytest.raises(ValueError):
        AXNode("1 2", "link")
    with pytest.raises(ValueError):
        AXNode("1", "two words")
    with pytest.raises(ValueError):
        AXNode("1", "link", props={"bad key": "x"})


def test_replace_keeps_raw_text_only_when_unchanged() -> None:
    tree = parse_axtree("[1] RootWebArea 'x'\n\t[2] link \"quoted\" focused: True")
    link = tree.nodes[1]
    assert link.replace(depth=3).render() == '\t\t\t[2] link "quoted" focused: True'
    assert link.replace(name="quoted").body() == '[2] link "quoted" focused: True'
    assert link.replace(name="new").body() == "[2] link 'new' focused: True"
    assert link.replace(props={}).body() == "[2] link 'quoted'"
    with pytest.raises(TypeError):
        link.replace(colour="red")


def test_edited_tree_renders_edits_canonically_and_the_rest_raw() -> None:
    tree = parse_axtree(PAGE)
    edited = [node.replace(name="Kids") if node.id == "1" else node for node in tree.nodes]
    new = AXTree.from_nodes(edited, header=tree.header)
    lines = new.render().split("\n")
    assert lines[2] == "[1] RootWebArea 'Kids' focused: True"
    assert lines[3:] == PAGE.split("\n")[3:]
    assert new.errors == []


def test_multiline_prop_values_stay_on_one_line() -> None:
    node = AXNode("3", "textbox", "q", {"value": "two\nlines"})
    assert node.body() == "[3] textbox 'q' value: two lines"


# --- BrowserGym dialect -------------------------------------------------------------

BROWSERGYM = (
    "[a1] RootWebArea 'Shop', focused\n"
    "\t[a2] button 'Submit', required, expanded=False\n"
    "\tStaticText 'hello'\n"
    "\t[a3] generic, live='polite'\n"
    "\t[12] textbox 'Query' value='socks, wool', box=\"(1, 2, 3, 4)\", valuemin=0\n"
    '\t\t[13] link "Women\'s", clickable, visible'
)


def test_browsergym_dialect_parses_and_renders_canonically() -> None:
    tree = parse_axtree(BROWSERGYM)
    assert tree.dialect is Dialect.BROWSERGYM
    assert tree.errors == []
    button = tree.get("a2")
    assert button is not None
    assert button.props == {"required": "True", "expanded": "False"}
    textbox = tree.get("12")
    assert textbox is not None
    assert textbox.props == {"value": "socks, wool", "box": "(1, 2, 3, 4)", "valuemin": "0"}
    static = tree.nodes[2]
    assert (static.id, static.role, static.name, static.depth) == (None, "StaticText", "hello", 1)
    assert tree.render() == (
        "[a1] RootWebArea 'Shop' focused: True\n"
        "\t[a2] button 'Submit' required: True expanded: False\n"
        "\tStaticText 'hello'\n"
        "\t[a3] generic '' live: polite\n"
        "\t[12] textbox 'Query' value: socks, wool box: (1, 2, 3, 4) valuemin: 0\n"
        '\t\t[13] link "Women\'s" clickable: True visible: True'
    )


def test_browsergym_without_attributes_is_told_by_its_ids() -> None:
    tree = parse_axtree("[a1] RootWebArea 'x'\n\tStaticText 'y'")
    assert tree.dialect is Dialect.BROWSERGYM
    assert tree.errors == []


def test_mixed_dialects_are_an_error() -> None:
    tree = parse_axtree("[1] RootWebArea 'x' focused: True\n\t[2] link 'y', focused")
    assert kinds(tree) == [ErrorKind.MIXED_DIALECT]
    assert tree.nodes[1].props == {"focused": "True"}


# --- malformed text -------------------------------------------------------------------

GOOD = "[1] RootWebArea 'x'\n\t[2] link 'y'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```\n" + GOOD + "\n```", [ErrorKind.JUNK_BEFORE, ErrorKind.JUNK_AFTER]),
        ("<a11y>\n" + GOOD + "\n</a11y>\n", [ErrorKind.JUNK_BEFORE, ErrorKind.JUNK_AFTER]),
        ("Here is the page:\n" + GOOD, [ErrorKind.JUNK_BEFORE]),
        (GOOD + "\nDone", [ErrorKind.JUNK_AFTER]),
        ("\n" + GOOD, [ErrorKind.JUNK_BEFORE]),
        ("[1] RootWebArea 'x'\n    [2] link 'y'", [ErrorKind.SPACE_INDENT]),
        ("[1] RootWebArea 'x'\n\tlink 'y'", [ErrorKind.MISSING_ID]),
        ("[1] RootWebArea 'x'\n\t[2] link", [ErrorKind.MISSING_NAME]),
        ("[1] RootWebArea 'x'\n\t[2] link 'Add to ca", [ErrorKind.BAD_QUOTE]),
        ("[1] RootWebArea 'x'\n\t[2] link 'Kid's' focused: True", [ErrorKind.BAD_QUOTE]),
        ("[1] RootWebArea 'x'\n\t[2] link Home focused: True", [ErrorKind.BAD_QUOTE]),
        ("[1] RootWebArea 'x'\n\t[2] link 'y' #junk", [ErrorKind.BAD_PROPS]),
        ("[1] RootWebArea 'x'\n\t[2]link  'y'", [ErrorKind.BAD_SPACING]),
        ("[1] RootWebArea 'x'\n\t[2", [ErrorKind.UNPARSEABLE_LINE]),
        ("[1] RootWebArea 'x'\n\t\t\t[2] link 'y'", [ErrorKind.DEPTH_JUMP]),
        ("[1] RootWebArea 'x'\n\t[2] link 'y'\n\t[2] link 'z'", [ErrorKind.DUPLICATE_ID]),
        ("\t[1] RootWebArea 'x'\n\t\t[2] link 'y'", [ErrorKind.ROOT_DEPTH]),
        ("[1] RootWebArea 'x'\n[2] RootWebArea 'y'", [ErrorKind.MULTIPLE_ROOTS]),
        ("[1] RootWebArea 'x'\n\n\t[2] link 'y'", [ErrorKind.BLANK_LINE]),
        ("[1] RootWebArea 'x'\r\n\t[2] link 'y'", [ErrorKind.CARRIAGE_RETURN]),
        ("Tab 0 (current): x\n" + GOOD, [ErrorKind.BAD_HEADER]),
        ("Tab 0: x\n\n" + GOOD, [ErrorKind.BAD_HEADER]),
        ("", [ErrorKind.EMPTY_TREE]),
        ("Sorry, I cannot predict the next page.", [ErrorKind.JUNK_BEFORE, ErrorKind.EMPTY_TREE]),
    ],
)
def test_each_structural_problem_is_reported(text: str, expected: list[ErrorKind]) -> None:
    tree = parse_axtree(text)
    assert sorted(kinds(tree)) == sorted(expected)


def test_errors_carry_line_numbers_and_messages() -> None:
    tree = parse_axtree("```\n[1] RootWebArea 'x'\n\t\t[2] link 'y'")
    junk, jump = tree.errors
    assert (junk.line, junk.kind) == (1, ErrorKind.JUNK_BEFORE)
    assert (jump.line, jump.kind) == (3, ErrorKind.DEPTH_JUMP)
    assert "'```'" in junk.message
    assert str(jump).startswith("line 3: depth_jump:")


def test_malformed_text_is_recovered_and_rendered_repaired() -> None:
    text = (
        "Sure! Here is the next page:\n```\n"
        "Tab 0 (current): Shop\n\n"
        "[1] RootWebArea 'Shop'\n"
        "  [2] link 'Kid's Wear' focused: True\n"
        "      [3] StaticText 'deep'\n"
        "  link 'no id'\n"
        "  [4] button 'Buy\n"
        "```"
    )
    tree = parse_axtree(text)
    assert [(node.id, node.role, node.name, node.depth) for node in tree.nodes] == [
        ("1", "RootWebArea", "Shop", 0),
        ("2", "link", "Kid's Wear", 1),
        ("3", "StaticText", "deep", 2),
        (None, "link", "no id", 1),
        ("4", "button", "Buy", 1),
    ]
    assert tree.title == "Shop"
    assert tree.render() == (
        "Tab 0 (current): Shop\n\n"
        "[1] RootWebArea 'Shop'\n"
        '\t[2] link "Kid\'s Wear" focused: True\n'
        "\t\t[3] StaticText 'deep'\n"
        "\tlink 'no id'\n"
        "\t[4] button 'Buy'"
    )
    assert kinds(parse_axtree(tree.render())) == [ErrorKind.MISSING_ID]


def test_truncation_marker_is_read_back() -> None:
    text = GOOD + "\n... (12 more elements truncated)\n"
    tree = parse_axtree(text)
    assert tree.errors == []
    assert tree.truncated == 12
    assert tree.render() == text


def test_repr_is_informative() -> None:
    assert repr(parse_axtree(GOOD)) == "AXTree(2 nodes, dialect=webarena, 0 errors)"
    assert repr(parse_axtree(GOOD).nodes[1]) == "AXNode(\"[2] link 'y'\", depth=1)"
