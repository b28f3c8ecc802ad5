"""Finding the system Chromium, launch options and the network policy, WebArena URL mapping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from websynthesis.config import EnvConfig
from websynthesis.data.tasks import Task
from websynthesis.env.browser import (
    CHROMIUM_ENV,
    ChromiumNotFoundError,
    LaunchOptions,
    find_chromium,
)
from websynthesis.env.browsergym_env import make_env
from websynthesis.env.observe import assign_text_ids, owner_of_text_id
from websynthesis.env.webarena import resolve_url, site_hosts
from websynthesis.web.actions import parse_action

# --- finding Chromium ---------------------------------------------------------------------


def fake_binary(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_first_known_name_on_path_is_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    fake_binary(tmp_path, "google-chrome-stable")
    chromium_browser = fake_binary(tmp_path, "chromium-browser")
    assert find_chromium() == chromium_browser


def test_the_override_wins_and_must_be_executable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fake_binary(tmp_path, "chromium")
    mine = fake_binary(tmp_path, "my-chrome")
    monkeypatch.setenv(CHROMIUM_ENV, str(mine))
    assert find_chromium() == mine
    assert find_chromium(str(mine)) == mine
    not_executable = tmp_path / "plain-file"
    not_executable.write_text("")
    with pytest.raises(ChromiumNotFoundError, match="not an executable"):
        find_chromium(str(not_executable))


def test_no_chromium_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ChromiumNotFoundError, match="apt-get install chromium"):
        find_chromium()
    with pytest.raises(ChromiumNotFoundError, match=CHROMIUM_ENV):
        make_env(EnvConfig(name="miniwob"))


# --- launch options -------------------------------------------------------------------------


def test_launch_options_merge_binary_switches_and_the_network_policy() -> None:
    options = LaunchOptions(Path("/opt/chromium"), allowed_hosts=("shop.test:7770",))
    merged = options.apply({"headless": True, "args": ["--window-size=500,320"]})
    assert merged["executable_path"] == "/opt/chromium"
    assert merged["headless"] is True
    args = merged["args"]
    assert args[0] == "--window-size=500,320"
    assert {"--no-sandbox", "--disable-gpu", "--no-first-run"} <= set(args)
    resolver = next(arg for arg in args if arg.startswith("--host-resolver-rules="))
    assert "MAP * ~NOTFOUND" in resolver and "EXCLUDE shop.test" in resolver
    assert "EXCLUDE localhost" in resolver
    bypass = next(arg for arg in args if arg.startswith("--proxy-bypass-list="))
    assert "shop.test:7770" in bypass and "127.0.0.1" in bypass
    assert options.apply({"args": None})["args"] == options.args()


# --- WebArena URLs (browsergym-webarena's conventions) ----------------------------------------

SITES = {"shopping_admin": "http://wa.local:7780/admin", "map": "http://wa.local:3000"}


@pytest.mark.parametrize(
    ("url", "sites", "expected"),
    [
        ("__SHOPPING_ADMIN__/sales/order", ("shopping_admin",), "http://wa.local:7780/admin/sales/order"),
        ("http://ec2-3-14.compute.amazonaws.com:7780/admin", ("shopping_admin",), "http://wa.local:7780/admin"),
        ("http://metis.lti.cs.cmu.edu:3000/#map=7/42/-79", ("wikipedia", "map"), "http://wa.local:3000/#map=7/42/-79"),
        ("http://elsewhere.org:3000/", ("gitlab",), "http://elsewhere.org:3000/"),
        ("http://elsewhere.org/", ("map",), "http://elsewhere.org/"),
    ],
)  # fmt: skip
def test_task_urls_move_onto_the_configured_sites(url: str, sites: tuple, expected: str) -> None:
    assert resolve_url(url, sites, SITES) == expected


def test_site_hosts_are_the_only_remote_hosts() -> None:
    assert site_hosts(SITES | {"reddit": ""}) == ("wa.local:7780", "wa.local:3000")


def test_webarena_needs_site_urls_and_tasks() -> None:
    with pytest.raises(ValueError, match="site_urls"):
        make_env(EnvConfig(name="webarena"))
    with pytest.raises(ValueError, match="tasks"):
        make_env(EnvConfig(name="webarena", site_urls={"map": "http://wa.local:3000"}))
    with pytest.raises(ValueError, match="unknown environment"):
        make_env(EnvConfig(name="osworld"))


# --- the policy, live ---------------------------------------------------------------------


@pytest.fixture
def local_site(tmp_path: Path, serve_dir: Callable[[Path], str]) -> str:
    """A one-page site on 127.0.0.1 (an ephemeral port), stopped after the test."""
    (tmp_path / "index.html").write_text("<title>Local page</title><p>served here</p>")
    return serve_dir(tmp_path)


@pytest.mark.browser
def test_pages_reach_the_machine_but_no_other_host(local_site: str) -> None:
    with make_env(EnvConfig(name="miniwob")) as env:
        env.reset("click-button", seed=0)
        assert env.read_page(local_site, "document.title") == "Local page"
        for blocked in ("http://example.com/", "http://93.184.215.14/", "https://pypi.org/"):
            with pytest.raises(ValueError, match="ERR_PROXY_CONNECTION_FAILED"):
                env.read_page(blocked, "document.title")
        with pytest.raises(ValueError, match="ReferenceError"):
            env.read_page(None, "no_such_variable")
        assert "served here" in env.read_page(local_site)


@pytest.mark.browser
@pytest.mark.slow
def test_webarena_tasks_open_on_the_configured_site(local_site: str) -> None:
    task = Task(
        "7", intent="Read the page", start_url="__SHOPPING__/index.html", sites=("shopping",)
    )
    config = EnvConfig(name="webarena", site_urls={"shopping": local_site.rstrip("/")})
    with make_env(config, [task]) as env:
        with pytest.raises(ValueError, match="unknown WebArena task"):
            env.reset("8", seed=0)
        observation = env.reset("7", seed=0)
        assert observation.goal == "Read the page"
        assert observation.url == f"{local_site}index.html"
        assert observation.text.startswith("Tab 0 (current): Local page\n\n")
        assert observation.tree.errors == []
        result = env.step(parse_action("scroll [down]"))
        assert (result.reward, result.done, result.error) == (0.0, False, None)
        assert env.step(parse_action("stop [served]")).done
        assert env.read_page("__SHOPPING__/index.html", "document.title") == "Local page"


# --- ids for the nodes BrowserGym leaves without one ---------------------------------------


def ax_node(node_id: str, children: tuple[str, ...] = (), bid: str | None = None) -> dict:
    node = {"nodeId": node_id, "childIds": list(children), "role": {"value": "generic"}}
    return node | ({"browsergym_id": bid} if bid is not None else {})


def test_text_ids_follow_structure_and_never_look_like_bids() -> None:
    tree = {
        "nodes": [
            ax_node("1", ("2", "5")),  # the document root: no bid
            ax_node("2", ("3", "4"), bid="12"),
            ax_node("3"),
            ax_node("4"),
            ax_node("5", ("6",), bid="a"),  # an iframe, linked to its document's root
            ax_node("6", ("7",)),
            ax_node("7", ("8",), bid="a5"),
            ax_node("8"),
            ax_node("9"),  # unreachable: left alone
        ]
    }
    ids = [node.get("browsergym_id") for node in assign_text_ids(tree)["nodes"]]
    assert ids == ["RA0", "12", "TA12", "TB12", "a", "RAa0", "a5", "TAa5", None]
    many = {"nodes": [ax_node("0", tuple(str(i) for i in range(1, 29)), bid="7")]}
    many["nodes"] += [ax_node(str(i)) for i in range(1, 29)]
    labels = [node["browsergym_id"] for node in assign_text_ids(many)["nodes"][1:]]
    assert labels[:2] == ["TA7", "TB7"] and labels[25:] == ["TZ7", "TAA7", "TAB7"]
    owners = [owner_of_text_id(i) for i in ("TA12", "TAB7", "TAa5", "RA0", "RAa0", "12", "a5")]
    assert owners == ["12", "7", "a5", None, None, None, None]


def test_a_bid_repeated_below_its_element_becomes_a_structural_id() -> None:
    # A date input's spinbuttons sit in Chromium's own shadow tree, and BrowserGym gives them
    # the input's bid: the first node with a bid keeps it, the repeats are numbered under it.
    tree = {
        "nodes": [
            ax_node("1", ("2", "6")),
            ax_node("2", ("3", "5"), bid="14"),  # the date input
            ax_node("3", ("4",), bid="14"),  # its month spinbutton
            ax_node("4"),  # the spinbutton's "mm"
            ax_node("5", bid="14"),  # its picker button
            ax_node("6", bid="15"),
        ]
    }
    ids = [node["browsergym_id"] for node in assign_text_ids(tree)["nodes"]]
    assert ids == ["RA0", "14", "TA14", "TB14", "TC14", "15"]
    assert [owner_of_text_id(i) for i in ids[2:5]] == ["14", "14", "14"]
