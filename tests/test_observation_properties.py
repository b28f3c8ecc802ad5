"""Hypothesis properties: round trips of random well-formed trees, and a parser that never
raises and always renders a repaired tree that parses back to itself."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.web.observation import AXNode, AXTree, ErrorKind, parse_axtree

# Per-test settings, not a profile: loading a profile would change every other test module.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Plain strategies rather than from_regex: generation dominates these tests' run time.
IDS = st.integers(0, 99_999).map(str) | st.integers(0, 999).map(lambda i: f"a{i}")
ROLES = st.sampled_from(
    ["RootWebArea", "link", "button", "StaticText", "generic", "HeaderAsNonLandmark", "tab"]
) | st.text(LETTERS, min_size=1, max_size=10)
NAMES = st.text(max_size=30)
KEYS = st.text(LETTERS, min_size=1, max_size=10)
# No ':' (a value like 'a b: c' would read back as two props) and no line breaks.
VALUES = st.text(st.characters(exclude_characters=":\n\r"), max_size=12)
PROPS = st.dictionaries(KEYS, VALUES, max_size=3)
TITLES = st.text(st.characters(exclude_characters="\n\r|"), max_size=20)


@st.composite
def depth_sequences(draw: st.DrawFn) -> list[int]:
    """Depths of a single-rooted tree in document order."""
    size = draw(st.integers(1, 25))
    depths = [0]
    for _ in range(size - 1):
        depths.append(draw(st.integers(1, depths[-1] + 1)))
    return depths


@st.composite
def headers(draw: st.DrawFn) -> str | None:
    titles = draw(st.lists(TITLES, min_size=1, max_size=3))
    if draw(st.booleans()):
        return None
    current = draw(st.integers(0, len(titles) - 1))
    return " | ".join(
        f"Tab {i}{' (current)' if i == current else ''}: {title}" for i, title in enumerate(titles)
    )


@st.composite
def trees(draw: st.DrawFn) -> AXTree:
    depths = draw(depth_sequences())
    ids = draw(st.lists(IDS, min_size=len(depths), max_size=len(depths), unique=True))
    nodes = [
        AXNode(node_id, draw(ROLES), draw(NAMES), draw(PROPS), depth)
        for node_id, depth in zip(ids, depths, strict=True)
    ]
    trailer = draw(st.sampled_from(["", "\n"]))
    return AXTree.from_nodes(nodes, header=draw(headers()), trailer=trailer)


def fields(tree: AXTree) -> list[tuple[object, ...]]:
    return [(n.id, n.role, n.name, n.props, n.depth) for n in tree.nodes]


@FAST
@given(trees())
def test_random_trees_round_trip(tree: AXTree) -> None:
    text = tree.render()
    parsed = parse_axtree(text)
    assert parsed.errors == []
    assert parsed.render() == text
    assert fields(parsed) == fields(tree)
    assert [n.parent.id if n.parent else None for n in parsed.nodes] == [
        n.parent.id if n.parent else None for n in tree.nodes
    ]


# Raw, non-canonical but well-formed name tokens, as the corpus has: double quotes without an
# apostrophe, and raw characters that repr() would escape.
RAW_TOKENS = st.text(st.characters(exclude_characters="'\\\n\r"), max_size=15).map(
    lambda name: f"'{name}'"
) | st.text(st.characters(exclude_characters='"\\\n\r'), max_size=15).map(lambda name: f'"{name}"')
RAW_TAILS = st.lists(
    st.tuples(KEYS, st.text(st.characters(exclude_characters="\n\r"), max_size=10)), max_size=3
).map(lambda pairs: "".join(f" {key}: {value}" for key, value in pairs))


@FAST
@given(depth_sequences(), st.data())
def test_raw_lines_round_trip_exactly(depths: list[int], data: st.DataObject) -> None:
    ids = data.draw(st.lists(IDS, min_size=len(depths), max_size=len(depths), unique=True))
    lines = [
        "\t" * depth
        + f"[{node_id}] {data.draw(ROLES)} {data.draw(RAW_TOKENS)}{data.draw(RAW_TAILS)}"
        for node_id, depth in zip(ids, depths, strict=True)
    ]
    text = "\n".join(lines)
    tree = parse_axtree(text)
    assert tree.errors == []
    assert tree.render() == text
    assert len(tree.nodes) == len(lines)


TREEISH = st.lists(
    st.sampled_from(
        [
            "\t",
            "    ",
            "[1]",
            "[a2] ",
            "link ",
            "'",
            '"',
            "name",
            " focused: True",
            ", required",
            "=False",
            "\\",
            "\\u00e9",
            "Tab 0 (current): t",
            "```",
            "<a11y>",
            ":",
            " ",
            "\n",
            "\n\t",
            "\r",
            "...",
            "(3 more elements truncated)",
            "StaticText 'x'",
            "[]",
            "generic",
        ]
    ),
    max_size=40,
).map("".join)

# Kinds a repaired rendering can still have: it keeps every element and the header as is.
SURVIVING = {
    ErrorKind.DUPLICATE_ID, ErrorKind.MULTIPLE_ROOTS, ErrorKind.MISSING_ID,
    ErrorKind.EMPTY_TREE, ErrorKind.BAD_HEADER,
}  # fmt: skip


@st.composite
def damaged_trees(draw: st.DrawFn) -> str:
    """A well-formed tree with a few random cuts and insertions, like broken model output."""
    text = draw(trees()).render()
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 8)))
        text = text[:start] + draw(TREEISH | st.just("")) + text[end:]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | TREEISH | damaged_trees())
def test_parse_never_raises_and_repairs(text: str) -> None:
    tree = parse_axtree(text)
    assert all(error.kind in ErrorKind for error in tree.errors)
    repaired = tree.render()
    again = parse_axtree(repaired)
    assert again.render() == repaired
    assert {error.kind for error in again.errors} <= SURVIVING
    assert [(n.id, n.role, n.name, n.depth) for n in again.nodes] == [
        (n.id, n.role, n.name, n.depth) for n in tree.nodes
    ]
    if not tree.errors:
        assert repaired == text or tree.dialect == "browsergym"


@FAST
@given(trees(), st.integers(0, 2000))
def test_truncation_fits_and_stays_valid(tree: AXTree, budget: int) -> None:
    cut = tree.truncate(max_chars=budget)
    text = cut.render()
    assert len(text) <= budget or len(cut.nodes) == 1
    reparsed = parse_axtree(text)
    assert reparsed.errors == []
    assert len(reparsed.nodes) + reparsed.truncated == len(tree.nodes)
    assert [n.render() for n in cut.nodes] == [n.render() for n in tree.nodes[: len(cut.nodes)]]


@FAST
@given(trees(), st.integers(1, 300))
def test_token_truncation_fits(tree: AXTree, budget: int) -> None:
    def count(text: str) -> int:
        return len(text.split())

    cut = tree.truncate(max_tokens=budget, count_tokens=count)
    assert count(cut.render()) <= budget or len(cut.nodes) == 1
    assert parse_axtree(cut.render()).errors == []


@FAST
@given(trees(), st.data())
def test_highlight_is_a_valid_tree_around_the_node(tree: AXTree, data: st.DataObject) -> None:
    node = data.draw(st.sampled_from(tree.nodes))
    assert node.id is not None
    view = tree.highlight(node.id, siblings=2, max_children=3)
    assert parse_axtree(view.render()).errors == []
    focus = view.get(node.id)
    assert focus is not None and focus.depth == node.depth
    assert [a.id for a in focus.ancestors()] == [a.id for a in node.ancestors()]
    assert len(focus.children) == min(3, len(node.children))
    family = node.parent.children if node.parent else [node]
    assert len(view.nodes) == len(node.ancestors()) + min(3, len(family)) + len(focus.children)
