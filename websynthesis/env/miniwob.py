"""MiniWoB++ tasks: BrowserGym's task classes over the pages the ``miniwob`` package ships.

The pages are served straight from the installed package as ``file://`` URLs (BrowserGym's
documented ``MINIWOB_URL`` form), so no server runs and nothing leaves the machine. A user
with their own MiniWoB++ server passes its base URL instead (``env.miniwob_url``).
"""

from __future__ import annotations

from importlib import resources

from browsergym.core.task import AbstractBrowserTask
from browsergym.miniwob import ALL_MINIWOB_TASKS

_PREFIX = "miniwob."
TASKS: dict[str, type[AbstractBrowserTask]] = {cls.subdomain: cls for cls in ALL_MINIWOB_TASKS}
"""MiniWoB++ task name (``click-button``) -> BrowserGym task class."""


def packaged_url() -> str:
    """The ``file://`` base URL of the task pages inside the ``miniwob`` package."""
    html = resources.files("miniwob") / "html" / "miniwob"
    return f"file://{html}/"


def task_class(name: str) -> type[AbstractBrowserTask]:
    """The BrowserGym class of ``click-button`` or ``miniwob.click-button``."""
    key = name.removeprefix(_PREFIX)
    if key not in TASKS:
        known = ", ".join(sorted(TASKS)[:8])
        raise ValueError(f"unknown MiniWoB++ task {name!r} ({len(TASKS)} known: {known}, ...)")
    return TASKS[key]
