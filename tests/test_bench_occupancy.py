"""The occupancy bench's split by trees left, its per-tree pages, and a miniature run of it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_occupancy import COPY_MARK, Step, marked, run_mode, split_by_trees_left  # noqa: E402

from websynthesis.web.observation import parse_axtree  # noqa: E402

PAGE = "[1] RootWebArea 'Shop' focused: True\n\t[12] button 'Buy'\n\t\t[13] StaticText 'now'"


def test_split_puts_each_step_in_its_band_of_trees_left() -> None:
    steps = [
        Step(rows=32, full=True, trees_left=70, trees_present=70),
        Step(rows=32, full=True, trees_left=64, trees_present=60),
        Step(rows=20, full=False, trees_left=40, trees_present=30),
        Step(rows=32, full=True, trees_left=32, trees_present=32),
        Step(rows=10, full=False, trees_left=20, trees_present=18),
        Step(rows=3, full=False, trees_left=5, trees_present=2),
    ]
    split = split_by_trees_left(steps, capacity=32)
    assert list(split) == [">=64", "32-63", "16-31", "<16"]
    assert [band["steps"] for band in split.values()] == [2, 2, 1, 1]
    assert split["32-63"]["full"] == pytest.approx(0.5)
    assert split["32-63"]["rows_per_step"] == pytest.approx(26.0)
    assert split["32-63"]["trees_present"] == pytest.approx(31.0)
    # Only the short step counts: 40 searching, 30 with a request in the engine.
    assert split["32-63"]["short_steps_trees_absent"] == pytest.approx(10.0)
    assert split[">=64"]["short_steps_trees_absent"] == 0.0
    assert split["<16"]["short_steps_trees_absent"] == pytest.approx(3.0)


def test_split_leaves_out_empty_bands() -> None:
    split = split_by_trees_left([Step(8, True, 3, 3)], capacity=8)
    assert list(split) == ["<4"]


def test_split_without_known_presence_leaves_its_figures_out() -> None:
    split = split_by_trees_left([Step(2, False, 3, 1)], capacity=8, presence_known=False)
    assert split["<4"]["trees_present"] is None
    assert split["<4"]["short_steps_trees_absent"] is None
    assert split["<4"]["full"] == 0.0


@pytest.mark.parametrize("page", [PAGE, f"<a11y>\n{PAGE}\n</a11y>"])
def test_a_marked_page_parses_and_names_its_tree(page: str) -> None:
    text = marked(page, "7")
    match = COPY_MARK.search(text)
    assert match is not None and match.group(1) == "7"
    body = text.removeprefix("<a11y>\n").removesuffix("</a11y>")
    tree = parse_axtree(body)
    assert tree.is_valid
    mark = tree.get("90")
    assert mark is not None and mark.name == "copy 7"
    assert tree.get("12") is not None and tree.get("13") is not None  # the page's own nodes


@pytest.mark.slow
@pytest.mark.parametrize("distinct_pages", [False, True])
def test_a_miniature_run_places_every_step_and_names_every_request(distinct_pages: bool) -> None:
    args = argparse.Namespace(
        trees=6,
        capacity=4,
        iterations=2,
        step_ms=0.5,
        row_ms=0.0,
        distinct_pages=distinct_pages,
    )
    report = run_mode(args, streaming=True, in_flight=1)
    assert report["expansions"] >= 6  # every tree expanded its root at least
    bands = report["by_trees_left"]
    assert sum(band["steps"] for band in bands.values()) == report["steps"]
    if distinct_pages:  # every request names its tree: the presence figures are kept
        assert report["unmarked_requests"] == 0
        for band in bands.values():
            assert 0.0 <= band["full"] <= 1.0
            assert band["trees_present"] <= band["trees_left"]
    else:  # the world model's questions are the shared page's: they name no tree
        assert report["unmarked_requests"] > 0
        assert all(band["trees_present"] is None for band in bands.values())
