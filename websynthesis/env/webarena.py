"""Self-hosted WebArena tasks in BrowserGym, built from our own ``Task`` configs.

``browsergym-webarena`` is not a dependency (it pins WebArena's own harness and needs the
sites at import), so this module gives BrowserGym a small task class instead: it opens the
task's start URL(s) and never scores. Episodes are scored afterwards by the project's
WebArena evaluators, which read the final page through ``WebEnv.read_page``.

Site URLs follow browsergym-webarena's conventions (``WA_SHOPPING``, ``WA_SHOPPING_ADMIN``,
``WA_REDDIT``, ``WA_GITLAB``, ``WA_MAP``, ``WA_WIKIPEDIA``, ``WA_HOMEPAGE``; the admin URL
includes ``/admin``). Task URLs may hold WebArena's placeholders (``__SHOPPING_ADMIN__``) or
the concrete URLs of whatever host the configs were written for: those are recognised by
WebArena's standard port of each of the task's sites and moved to the configured host.

A task with ``require_login`` is logged in to its sites before its first page
(:mod:`websynthesis.env.login`; its ``storage_state`` file when it exists). Not verified
here (no WebArena instance is reachable from this machine): the real sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import playwright.sync_api
from browsergym.core.task import AbstractBrowserTask

from websynthesis.data.tasks import Task
from websynthesis.env.login import LoginSettings, log_in

# WebArena's docker layout: the port each site is published on.
SITE_PORTS = {
    "shopping": 7770,
    "shopping_admin": 7780,
    "reddit": 9999,
    "gitlab": 8023,
    "map": 3000,
    "wikipedia": 8888,
    "homepage": 4399,
}
_MULTI_URL = " |AND| "  # WebArena's separator for tasks that start with several tabs


def resolve_url(url: str, sites: tuple[str, ...], site_urls: Mapping[str, str]) -> str:
    """``url`` moved onto the configured sites: placeholders substituted, and a concrete URL
    on the standard port of one of ``sites`` re-based onto that site's configured origin.
    Sites without a configured URL are left alone."""
    for site, base in site_urls.items():
        if base:
            url = url.replace(f"__{site.upper()}__", base.rstrip("/"))
    parts = urlsplit(url)
    for site in sites:
        base = site_urls.get(site)
        if base and parts.port is not None and parts.port == SITE_PORTS.get(site):
            target = urlsplit(base)
            return urlunsplit((target.scheme, target.netloc, *parts[2:]))
    return url


def site_hosts(site_urls: Mapping[str, str]) -> tuple[str, ...]:
    """The ``host:port`` of every configured site: the only remote hosts a page may reach."""
    return tuple(urlsplit(url).netloc for url in site_urls.values() if url)


class WebArenaTask(AbstractBrowserTask):
    """One WebArena task for BrowserGym: opens the start URL(s), leaves scoring to evaluators.

    Viewport, slow-mo and timeout are browsergym-webarena's (1280x720, 1000 ms, 10 s).
    """

    def __init__(
        self,
        seed: int,
        task: Task,
        site_urls: Mapping[str, str],
        login: LoginSettings | None = None,
    ) -> None:
        super().__init__(seed)
        self.task = task
        self.site_urls = dict(site_urls)
        self.login = login
        self.viewport = {"width": 1280, "height": 720}
        self.slow_mo = 1000
        self.timeout = 10000

    @classmethod
    def get_task_id(cls) -> str:
        return "websynthesis.webarena"

    def setup(self, page: playwright.sync_api.Page) -> tuple[str, dict]:
        urls = [
            resolve_url(url.strip(), self.task.sites, self.site_urls)
            for url in self.task.start_url.split(_MULTI_URL)
            if url.strip()
        ]
        if not urls:
            raise ValueError(f"WebArena task {self.task.task_id} has no start_url")
        logged_in: list[str] = []
        if self.login is not None and self.task.extra.get("require_login"):
            sites = {s: self.site_urls[s] for s in self.task.sites if self.site_urls.get(s)}
            state = self.task.extra.get("storage_state")
            logged_in = log_in(page.context, sites, self.login, str(state) if state else None)
        page.goto(urls[0])
        for url in urls[1:]:
            page.context.new_page().goto(url)
        info = {"task_id": self.task.task_id, "start_urls": urls, "logged_in": logged_in}
        return self.task.intent, info

    def validate(
        self, page: playwright.sync_api.Page, chat_messages: list[str]
    ) -> tuple[float, bool, str, dict]:
        """Never scores and never ends the episode: the agent's ``stop`` does."""
        return 0.0, False, "", {}
