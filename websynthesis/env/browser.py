"""The system Chromium: finding it, and how every browser of the project is launched.

Playwright's own browser download is not available everywhere (offline machines, CI
images), so the project drives the distribution's Chromium through Playwright's
``executable_path``. :func:`find_chromium` looks for it; :class:`LaunchOptions` holds what
every launch adds, and :func:`websynthesis.env.worker.patch_browsergym` is the one place
where BrowserGym's launches are made to use it.

Network policy: a browser may only reach the machine itself and the hosts a task needs
(WebArena's sites). Two Chromium switches enforce it: ``--proxy-server`` points every
other request (IP literals included) at a closed local port, and ``--host-resolver-rules``
makes every other host name unresolvable, so not even a DNS query leaves the machine.
``file://`` pages (MiniWoB++) are not network requests and are unaffected.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "WEBSYNTHESIS_CHROMIUM"
"""Environment variable naming a Chromium/Chrome binary; it wins over the search."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

LOCAL_HOSTS = ("localhost", "127.0.0.1")

# Playwright already adds --no-sandbox, --no-first-run, --disable-background-networking,
# --disable-component-update and the other automation switches; these are what it lacks.
BASE_ARGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-sandbox",
)
# Nothing listens on the discard port, so a request sent to this "proxy" fails at once.
_DEAD_PROXY = "127.0.0.1:9"

INSTALL_HINT = (
    "No Chromium found. Install your distribution's Chromium (Debian/Ubuntu: "
    "`sudo apt-get install chromium`; `make setup` does it when run as root) or set "
    f"{CHROMIUM_ENV} to a Chromium/Chrome binary."
)


class ChromiumNotFoundError(FileNotFoundError):
    """No usable Chromium binary; the message says what to install."""


def find_chromium(override: str | None = None) -> Path:
    """The Chromium binary to drive: ``override``, else ``$WEBSYNTHESIS_CHROMIUM``, else the
    first of :data:`CHROMIUM_NAMES` on ``PATH``. An explicit choice that is not an executable
    file is an error rather than silently replaced by another browser."""
    explicit = override or os.environ.get(CHROMIUM_ENV)
    if explicit:
        path = Path(shutil.which(explicit) or explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ChromiumNotFoundError(f"{explicit!r} is not an executable file. {INSTALL_HINT}")
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ChromiumNotFoundError(INSTALL_HINT)


@dataclass(frozen=True)
class LaunchOptions:
    """What every Chromium launch of the project adds to the caller's own options.

    ``allowed_hosts`` are host names (optionally ``host:port``) besides the machine itself
    that pages may reach; see the module docstring for how the rest is blocked.
    """

    executable: Path
    allowed_hosts: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """Command-line switches: :data:`BASE_ARGS` plus the network policy."""
        hosts = LOCAL_HOSTS + tuple(host.split(":")[0] for host in self.allowed_hosts)
        excluded = ", ".join(f"EXCLUDE {host}" for host in dict.fromkeys(hosts))
        bypass = ";".join(dict.fromkeys(LOCAL_HOSTS + self.allowed_hosts))
        return [
            *BASE_ARGS,
            f"--host-resolver-rules=MAP * ~NOTFOUND, {excluded}",
            f"--proxy-server={_DEAD_PROXY}",
            f"--proxy-bypass-list={bypass}",
        ]

    def apply(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Playwright ``launch`` kwargs with our binary and switches merged in (the caller's
        own ``args`` are kept first)."""
        merged = dict(kwargs)
        merged["executable_path"] = str(self.executable)
        merged["args"] = [*(kwargs.get("args") or ()), *self.args()]
        return merged
