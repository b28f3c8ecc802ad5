"""``python -m websynthesis.synthesis.view``: a searched tree as one self-contained HTML page,
checked as text and in headless Chromium (skipped, saying why, where there is none)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_synthesis_world_policy import FICTION, Website, search

from websynthesis.env.browser import LaunchOptions, find_chromium
from websynthesis.synthesis.state import encode_action
from websynthesis.synthesis.view import load_record, main, render_html


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = asyncio.run(search(Website(), iterations=6).run())
    record = {
        "task_id": "t1",
        "skipped": None,
        "tree": result.to_dict(lambda state: state.to_json(), encode_action),
    }
    skipped = {"task_id": "t2", "skipped": "the task has no first page (state)", "tree": None}
    path = tmp_path_factory.mktemp("run")
    lines = [json.dumps(record), json.dumps(skipped)]
    (path / "trees.jsonl").write_text("\n".join(lines) + "\n" + '{"task_id": "t3", "tr')
    return path


def test_the_page_shows_every_node_with_its_numbers_and_page_diffs(run_dir: Path) -> None:
    record = load_record(run_dir, "t1")
    page = render_html(record)
    nodes = record["tree"]["nodes"]
    assert page.count('<details id="node-') == len(nodes)
    assert "type [15] [Le Guin] [1]" in page and "stop [The Dispossessed]" in page
    assert "Reason: judged" not in page and "judged type [15] [Le Guin] [1]." in page  # reason
    assert "reward 4 ·" in page and "Q " in page and "N " in page
    assert "class='terminal stop'" in page
    assert "+ [40] link &#x27;Dune&#x27;" in page  # what clicking Fiction added
    assert "- [15] searchbox" in page
    assert FICTION.split("\n")[0] in page  # the full page, one click away
    assert "<script" not in page and "<link" not in page and " src=" not in page  # no assets


def test_cli_writes_the_page_and_refuses_unknown_or_torn_tasks(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t1.html"
    assert main([str(run_dir), "--task", "t1", "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main([str(run_dir), "--task", "t2"]) == 0
    assert "Not searched: the task has no first page" in (run_dir / "view" / "t2.html").read_text()
    assert main([str(run_dir), "--task", "t3"]) == 2  # its line is torn: not recorded
    assert "task 't3' is not in" in capsys.readouterr().err


@pytest.mark.browser
def test_the_nodes_are_there_and_expand_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    launch = LaunchOptions(find_chromium()).apply({"headless": True})
    from playwright.sync_api import sync_playwright

    out = tmp_path / "tree.html"
    assert main([str(run_dir), "--task", "t1", "--out", str(out)]) == 0
    nodes = load_record(run_dir, "t1")["tree"]["nodes"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch)
        try:
            page = browser.new_page()
            page.goto(out.as_uri())
            assert page.locator("details[id^=node-]").count() == len(nodes)
            node_id = page.locator("details[id^=node-]:not([open])").first.get_attribute("id")
            assert node_id is not None
            node = page.locator(f"#{node_id}")  # a node off the best path: closed
            full_page = node.locator(":scope > details.page")
            assert node.get_attribute("open") is None and not full_page.is_visible()
            node.locator(":scope > summary").click()
            assert node.get_attribute("open") is not None and full_page.is_visible()
        finally:
            browser.close()
