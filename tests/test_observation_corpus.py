"""The acceptance test: every real WebArena first page round-trips exactly and is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from websynthesis.web.observation import AXNode, AXTree, parse_axtree


@pytest.fixture(scope="module")
def pages(webarena_tasks_path: Path) -> list[str]:
    with webarena_tasks_path.open(encoding="utf-8") as lines:
        return [json.loads(line)["state"] for line in lines if line.strip()]


def element_lines(page: str) -> list[str]:
    lines = page.split("\n")
    if lines[0].startswith("Tab "):
        lines = lines[2:]
    return [line for line in lines if line]


def test_corpus_is_complete(pages: list[str]) -> None:
    assert len(pages) == 644


def test_every_page_round_trips_exactly_with_no_errors(pages: list[str]) -> None:
    for number, page in enumerate(pages):
        tree = parse_axtree(page)
        assert tree.errors == [], (number, tree.errors[:3])
        assert tree.render() == page, number
        assert len(tree.nodes) == len(element_lines(page)), number
        assert tree.title is not None and tree.roots == tree.nodes[:1]


def test_rebuilt_trees_render_the_same_text(pages: list[str]) -> None:
    """The line-by-line renderer (used by every derived tree) agrees with the source."""
    for number, page in enumerate(pages):
        tree = parse_axtree(page)
        rebuilt = AXTree.from_nodes(tree.nodes, header=tree.header, trailer=tree.trailer)
        assert rebuilt.errors == [], number
        assert rebuilt.render() == page, number


def test_canonical_lines_read_back_to_the_same_fields(pages: list[str]) -> None:
    for page in pages:
        for node in parse_axtree(page).nodes:
            canonical = AXNode(node.id, node.role, node.name, node.props)
            again = parse_axtree(canonical.body()).nodes[0]
            assert (again.id, again.role, again.name, again.props) == (
                node.id, node.role, node.name, node.props,
            )  # fmt: skip


def test_views_of_real_pages_stay_valid(pages: list[str]) -> None:
    for page in pages[::16]:
        tree = parse_axtree(page)
        cut = tree.truncate(max_chars=len(page) // 2)
        assert len(cut.render()) <= len(page) // 2
        assert parse_axtree(cut.render()).errors == []
        for node in tree.interactive()[:5]:
            assert node.id is not None
            assert parse_axtree(tree.highlight(node.id).render()).errors == []
