"""WebArena logins (websynthesis/env/login.py) against a stand-in site with a login form: a
task with ``require_login`` starts logged in, the state is saved and reused by the next
browser, the task's own ``storage_state`` wins, and a login that does not take fails."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from websynthesis.config import EnvConfig
from websynthesis.data.tasks import Task
from websynthesis.env.base import EnvError
from websynthesis.env.browsergym_env import make_env
from websynthesis.env.login import ACCOUNTS, FORMS, site_logins

PASSWORD = "curie-1867-test"
FORM = """<title>Log in | Quiet Forum</title><h1>Log in</h1>
<form method="post" action="/login">
<label for="user">Username</label><input id="user" name="user">
<label for="pass">Password</label><input id="pass" name="pass" type="password">
<button id="go" type="submit">Log in</button></form>"""


class Forum:
    """A stand-in site: ``/login`` sets a session cookie for marie, ``/`` greets her."""

    def __init__(self) -> None:
        self.posts = 0
        forum = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/login"):
                    return self._page(FORM)
                if "session=marie-token" in (self.headers.get("Cookie") or ""):
                    return self._page("<title>Quiet Forum</title><h1>Welcome, marie</h1>")
                return self._page("<title>Quiet Forum</title><h1>Please log in</h1>")

            def do_POST(self) -> None:
                forum.posts += 1
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if form.get("user") == ["marie"] and form.get("pass") == [PASSWORD]:
                    self.send_response(303)
                    self.send_header("Set-Cookie", "session=marie-token; Path=/; HttpOnly")
                    self.send_header("Location", "/")
                    self.end_headers()
                    return None
                return self._page(FORM)

            def _page(self, html: str) -> None:
                body = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def forum() -> Iterator[Forum]:
    site = Forum()
    yield site
    site.server.shutdown()
    site.server.server_close()


def tasks(**extra: object) -> list[Task]:
    def task(task_id: str, login: bool) -> Task:
        config = {"require_login": login, **extra}
        return Task(task_id, "Read the forum", "__FORUM__/", ("forum",), extra=config)

    return [task("in", True), task("out", False)]


def config(url: str, auth_dir: Path, **login: str) -> EnvConfig:
    form = {"path": "login", "username_field": "#user", "password_field": "#pass", "submit": "#go"}
    form |= {"username": "marie", "password_env": "TEST_FORUM_PASSWORD"}
    return EnvConfig(
        name="webarena",
        site_urls={"forum": url},
        logins={"forum": form | login},
        auth_dir=str(auth_dir),
        reset_timeout_s=60,
    )


pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_task_that_needs_a_login_starts_logged_in_and_the_state_is_reused(
    forum: Forum, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_FORUM_PASSWORD", PASSWORD)
    cfg = config(forum.url, tmp_path / "auth")
    with make_env(cfg, tasks()) as env:
        assert "Welcome, marie" in env.reset("in", 0).text
        assert forum.posts == 1
        assert "Please log in" in env.reset("out", 0).text  # a fresh browser, no login asked
    saved = json.loads((tmp_path / "auth" / "forum.json").read_text())
    assert [c["name"] for c in saved["cookies"]] == ["session"]
    assert PASSWORD not in (tmp_path / "auth" / "forum.json").read_text()
    with make_env(cfg, tasks()) as env:  # another browser: the saved state, no form
        assert "Welcome, marie" in env.reset("in", 1).text
    assert forum.posts == 1


def test_the_tasks_own_storage_state_wins_and_a_wrong_password_fails(
    forum: Forum, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_FORUM_PASSWORD", "wrong")
    state = tmp_path / ".auth" / "forum_state.json"
    state.parent.mkdir()
    host = forum.url.removeprefix("http://").split(":")[0]
    cookie = {"name": "session", "value": "marie-token", "domain": host, "path": "/",
              "expires": -1, "httpOnly": True, "secure": False, "sameSite": "Lax"}  # fmt: skip
    state.write_text(json.dumps({"cookies": [cookie], "origins": []}))
    cfg = config(forum.url, tmp_path / "auth")
    with make_env(cfg, tasks(storage_state=str(state))) as env:
        assert "Welcome, marie" in env.reset("in", 0).text
    assert forum.posts == 0
    with make_env(cfg, tasks()) as env:
        with pytest.raises(EnvError, match="did not take"):
            env.reset("in", 0)
        assert "Please log in" in env.reset("out", 0).text  # the env still works
    # a failed reset is tried once more on a fresh browser (a slow site may time out once)
    assert forum.posts == 2 and not (tmp_path / "auth" / "forum.json").exists()


def test_site_logins_take_the_documented_accounts_and_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logins = site_logins({})
    assert set(logins) == set(FORMS) == set(ACCOUNTS)
    assert (logins["gitlab"].username, logins["gitlab"].password) == ACCOUNTS["gitlab"]
    assert "hello1234" not in repr(logins["gitlab"])
    monkeypatch.setenv("MY_GITLAB_PASSWORD", "s3cret-pass")
    mine = site_logins({"gitlab": {"username": "me", "password_env": "MY_GITLAB_PASSWORD"}})
    assert (mine["gitlab"].username, mine["gitlab"].password) == ("me", "s3cret-pass")
    assert mine["gitlab"].username_field == FORMS["gitlab"].username_field
    with pytest.raises(ValueError, match=r"env.logins.wiki needs \['password_field'"):
        site_logins({"wiki": {"path": "login", "username_field": "#u", "submit": "#s"}})
    with pytest.raises(ValueError, match="unknown keys"):
        site_logins({"gitlab": {"pasword": "x"}})
