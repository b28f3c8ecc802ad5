"""Logging in to WebArena's sites before a task that needs it, once, then reusing the session.

Every WebArena task config says ``require_login`` (nearly all: ``true``) and names a
Playwright ``storage_state`` file made by WebArena's own login script. A task opened logged
out starts on a login wall (or as an anonymous shopper), which is not the page the task was
written for. So before such a task's first page, each of its sites is logged in to:

1. the task's own ``storage_state`` file, when it exists (a user who ran WebArena's script);
2. else this project's saved state for the site (``<auth_dir>/<site>.json``), when younger
   than ``max_age_s``;
3. else the site's login form is filled with its account (WebArena's documented accounts,
   :data:`ACCOUNTS`, or ``env.logins.<site>``) and the context's storage state is saved
   there (atomically) for the next task and the next browser.

A login that does not take (the form still there after submitting) raises
:class:`LoginFailed`, and the episode is an error rather than one played logged out.
Passwords come from the environment variable ``env.logins.<site>.password_env`` names, else
the documented one; they never enter a config file. Cookies carry these sites' sessions, so
a saved state is applied as its cookies (local storage is not restored).

Not verified against the real sites (no WebArena instance is reachable here): the form
selectors below follow the sites' standard themes (Magento's Luma storefront and its admin,
Postmill, GitLab CE); ``env.logins.<site>`` overrides each. Tested against a stand-in site
with a login form (tests/test_login.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import playwright.sync_api

from websynthesis.io import atomic_write_text


@dataclass(frozen=True)
class SiteLogin:
    """How to log in to one site: the login page (relative to the site's base URL), the
    CSS selectors of the two fields and the submit button, and the account."""

    path: str
    username_field: str
    password_field: str
    submit: str
    username: str = ""
    password: str = field(default="", repr=False)  # never in a repr, a log or a config

    def url(self, base: str) -> str:
        return base.rstrip("/") + "/" + self.path.lstrip("/") if self.path else base


# WebArena's documented test accounts (its README), the defaults of env.logins.
ACCOUNTS = {
    "shopping": ("emma.lopez@gmail.com", "Password.123"),
    "shopping_admin": ("admin", "admin1234"),
    "reddit": ("MarvelsGrantMan136", "test1234"),
    "gitlab": ("byteblaze", "hello1234"),
}
FORMS = {
    "shopping": SiteLogin("customer/account/login/", "#email", "#pass", "#send2"),
    "shopping_admin": SiteLogin("", "#username", "#login", "button.action-login"),
    "reddit": SiteLogin(
        "login", "input[name=_username]", "input[name=_password]", "button[type=submit]"
    ),
    "gitlab": SiteLogin("users/sign_in", "#user_login", "#user_password", "button[type=submit]"),
}


_FORM_KEYS = ("path", "username_field", "password_field", "submit")


class LoginFailed(RuntimeError):
    """A site's login form did not log in (still shown after submitting)."""


def site_logins(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, SiteLogin]:
    """Each site's login: :data:`FORMS` and :data:`ACCOUNTS`, with ``env.logins`` over them.

    ``overrides.<site>`` may set ``path``, ``username_field``, ``password_field``, ``submit``,
    ``username`` and ``password_env`` (the NAME of the variable holding the password); a
    site not in :data:`FORMS` needs all of the first four.
    """
    logins = {}
    for site in sorted(set(FORMS) | set(overrides)):
        given = dict(overrides.get(site) or {})
        base = FORMS.get(site)
        user, password = ACCOUNTS.get(site, ("", ""))
        env_name = given.pop("password_env", None)
        if env_name and os.environ.get(str(env_name)):
            password = os.environ[str(env_name)]
        fields = {k: str(v) for k, v in given.items() if v is not None}
        unknown = set(fields) - {*_FORM_KEYS, "username"}
        if unknown:
            raise ValueError(f"env.logins.{site}: unknown keys {sorted(unknown)}")
        if base is None:
            missing = set(_FORM_KEYS) - set(fields)
            if missing:
                raise ValueError(f"env.logins.{site} needs {sorted(missing)} (a site of its own)")
            base = SiteLogin(**{key: fields.pop(key) for key in _FORM_KEYS})
        username = fields.pop("username", user)
        logins[site] = replace(base, username=username, password=password, **fields)
    return logins


@dataclass(frozen=True)
class LoginSettings:
    """What a worker needs to log tasks in (picklable): the sites' logins, where states are
    saved, and how long a saved state is trusted."""

    logins: Mapping[str, SiteLogin]
    auth_dir: str
    max_age_s: float = 3600.0


def log_in(
    context: playwright.sync_api.BrowserContext,
    sites: Mapping[str, str],
    settings: LoginSettings,
    storage_state: str | None = None,
) -> list[str]:
    """Log ``context`` in to each of ``sites`` (site -> base URL) that has a login; returns
    the sites logged in to. See the module docstring for the order of the three ways."""
    if storage_state and Path(storage_state).is_file():
        _add_cookies(context, Path(storage_state))
        return sorted(site for site in sites if site in settings.logins)
    done = []
    for site, base in sorted(sites.items()):
        login = settings.logins.get(site)
        if login is None:
            continue
        saved = Path(settings.auth_dir) / f"{site}.json"
        fresh = saved.is_file() and time.time() - saved.stat().st_mtime < settings.max_age_s
        if fresh:
            _add_cookies(context, saved)
        else:
            _submit_form(context, site, login, base)
            saved.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(context.storage_state()))
        done.append(site)
    return done


def _submit_form(
    context: playwright.sync_api.BrowserContext, site: str, login: SiteLogin, base: str
) -> None:
    page = context.new_page()
    try:
        page.goto(login.url(base))
        page.fill(login.username_field, login.username)
        page.fill(login.password_field, login.password)
        page.click(login.submit)
        page.wait_for_load_state()
        if page.locator(login.password_field).count():
            raise LoginFailed(
                f"logging in to {site} as {login.username!r} at {login.url(base)} did not take "
                "(the form is still there): check env.logins."
                f"{site} (the account, password_env, the form's selectors)"
            )
    except playwright.sync_api.Error as error:
        message = str(error).strip().splitlines()[0]
        raise LoginFailed(f"logging in to {site} at {login.url(base)}: {message}") from None
    finally:
        page.close()


def _add_cookies(context: playwright.sync_api.BrowserContext, path: Path) -> None:
    state = json.loads(path.read_text(encoding="utf-8"))
    cookies = state.get("cookies") or []
    if cookies:
        context.add_cookies(cookies)
