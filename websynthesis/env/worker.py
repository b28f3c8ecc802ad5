"""The browser side: one BrowserGym environment, driven inside its own worker process.

:class:`~websynthesis.env.browsergym_env.BrowserGymEnv` starts :func:`serve` in a child
process and talks to it over a pipe. Keeping Playwright out of the caller's process is what
makes hangs and crashes recoverable: a Playwright call blocked on a dead or looping page
cannot be interrupted, but a process can be killed, browser and all.

:func:`patch_browsergym` is the ONE place BrowserGym is changed, in the worker only:

1. BrowserGym launches browsers through a global Playwright instance
   (``browsergym.core._get_global_playwright``); it is replaced, through BrowserGym's own
   ``_set_global_playwright``, by a wrapper whose ``chromium.launch`` adds the system
   Chromium and the project's switches (:class:`~websynthesis.env.browser.LaunchOptions`).
   ``pw_chromium_kwargs`` cannot carry them: BrowserGym passes ``args`` itself, and a second
   ``args`` is a ``TypeError``.
2. BrowserGym's ``Chat`` opens a second visible-or-headless Chromium per episode, a chat
   window for humans; :class:`_ChatLog` keeps the same message list without a browser,
   which halves the reset time.
3. BrowserGym's action functions give every Playwright call a fixed ``timeout=500`` (ms).
   On a loaded machine a valid click outlasts it (Playwright logs "click action done",
   then "waiting for scheduled navigations to finish"): the step comes back as a
   ``TimeoutError`` refusal although the page took it, and whether it does depends on the
   load, not on the action, so a seeded search or evaluation stops repeating itself.
   :func:`browsergym_actions` writes ``EnvConfig.action_timeout_ms`` into the action code instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import browsergym.core
import browsergym.core.env
import playwright.sync_api
from browsergym.core.action.highlevel import HighLevelActionSet
from browsergym.core.env import BrowserEnv

from websynthesis.data.tasks import Task
from websynthesis.env import miniwob
from websynthesis.env.browser import LaunchOptions
from websynthesis.env.login import LoginSettings
from websynthesis.env.observe import observation_fields
from websynthesis.env.webarena import WebArenaTask, resolve_url

# Subsets holding every call Action.browsergym_calls() emits (keyboard_press is in "coord").
_SUBSETS = ["chat", "infeas", "bid", "coord", "nav", "tab"]
_FIXED_TIMEOUT = re.compile(r"\btimeout=500\b")  # BrowserGym's literal in its action functions


def browsergym_actions(timeout_ms: int) -> HighLevelActionSet:
    """BrowserGym's high-level actions, each Playwright call waiting up to ``timeout_ms``
    (patch 3 of the module docstring)."""
    actions = HighLevelActionSet(subsets=_SUBSETS, multiaction=True, strict=False)
    code, found = _FIXED_TIMEOUT.subn(f"timeout={int(timeout_ms)}", actions.python_includes)
    if not found:  # a BrowserGym that no longer writes the literal: say so, do not guess
        raise RuntimeError("BrowserGym's action code has no timeout=500 to set any more")
    actions.python_includes = code
    return actions


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable: how to launch, and which tasks it can run.

    ``miniwob_url`` is the base URL of the MiniWoB++ pages; ``webarena_tasks`` maps task ids
    to tasks (empty for MiniWoB). ``headless=False`` is for watching an agent locally.
    """

    launch: LaunchOptions
    miniwob_url: str
    headless: bool = True
    webarena_tasks: dict[str, Task] = field(default_factory=dict)
    site_urls: dict[str, str] = field(default_factory=dict)
    login: LoginSettings | None = None  # None: tasks start logged out
    action_timeout_ms: int = 2000  # each Playwright call of an action (patch 3)


class RequestError(ValueError):
    """The request itself was wrong (unknown task, bad script); the browser is fine."""


class _ChatLog:
    """BrowserGym's ``Chat`` without its browser window: the message list only."""

    def __init__(self, **_: Any) -> None:
        self.messages: list[dict[str, Any]] = []

    def add_message(self, role: str, msg: str) -> None:
        if role != "info":  # BrowserGym's Chat shows "info" messages without recording them
            self.messages.append({"role": role, "timestamp": 0.0, "message": msg})

    def wait_for_user_message(self) -> None:
        raise RuntimeError(
            "no human in the loop: create BrowserEnv with wait_for_user_message=False"
        )

    def close(self) -> None:
        """Nothing to close."""


class _SystemChromium:
    """Stands in for ``playwright.chromium``: every launch gets :class:`LaunchOptions`."""

    def __init__(self, browser_type: playwright.sync_api.BrowserType, options: LaunchOptions):
        self._type = browser_type
        self._options = options

    def launch(self, **kwargs: Any) -> playwright.sync_api.Browser:
        return self._type.launch(**self._options.apply(kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._type, name)


class _PatchedPlaywright:
    """A Playwright instance whose ``chromium`` is :class:`_SystemChromium`."""

    def __init__(self, pw: playwright.sync_api.Playwright, options: LaunchOptions) -> None:
        self._pw = pw
        self.chromium = _SystemChromium(pw.chromium, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pw, name)


def patch_browsergym(options: LaunchOptions) -> playwright.sync_api.Playwright:
    """Apply patches 1 and 2 of the module docstring; returns the Playwright to stop at exit."""
    pw = playwright.sync_api.sync_playwright().start()
    browsergym.core._set_global_playwright(_PatchedPlaywright(pw, options))
    browsergym.core.env.Chat = _ChatLog
    return pw


class Session:
    """One BrowserGym environment at a time, rebuilt on every reset (BrowserGym relaunches the
    browser on reset anyway). Methods return plain picklable dicts for the pipe."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.actions = browsergym_actions(spec.action_timeout_ms)
        self.env: BrowserEnv | None = None
        self.sites: tuple[str, ...] = ()  # the WebArena sites of the current task

    def reset(self, task: str, seed: int) -> dict[str, Any]:
        entrypoint, kwargs = self._task(task)
        self.close()
        self.sites = kwargs["task"].sites if "task" in kwargs else ()
        self.env = BrowserEnv(
            task_entrypoint=entrypoint,
            task_kwargs=kwargs,
            headless=self.spec.headless,
            action_mapping=self.actions.to_python_code,
        )
        obs, _ = self.env.reset(seed=seed)
        return observation_fields(obs)

    def step(self, code: str) -> dict[str, Any]:
        env = self._require_env()
        obs, reward, terminated, truncated, info = env.step(code)
        if not env.browser.is_connected() or env.page.is_closed():
            raise RuntimeError(f"the browser died during the step ({obs['last_action_error']})")
        return observation_fields(obs) | {
            "reward": float(reward),
            "done": bool(terminated or truncated),
            "info": info.get("task_info"),
        }

    def read_page(self, url: str | None, script: str | None) -> str:
        """WebArena's program_html reading: ``str(page.evaluate(script))`` as its evaluator
        does, after going to ``url`` moved onto the configured sites (:func:`resolve_url`)."""
        page = self._require_env().page
        try:
            if url:
                page.goto(resolve_url(url, self.sites, self.spec.site_urls))
            return page.content() if script is None else str(page.evaluate(script))
        except playwright.sync_api.Error as error:
            if not page.context.browser or not page.context.browser.is_connected():
                raise
            raise RequestError(f"{type(error).__name__}: {error}") from None

    def close(self) -> None:
        if self.env is not None:
            env, self.env = self.env, None
            env.close()

    def _task(self, name: str) -> tuple[type, dict[str, Any]]:
        if self.spec.webarena_tasks:
            if name not in self.spec.webarena_tasks:
                raise RequestError(f"unknown WebArena task id {name!r}")
            return WebArenaTask, {
                "task": self.spec.webarena_tasks[name],
                "site_urls": self.spec.site_urls,
                "login": self.spec.login,
            }
        try:
            return miniwob.task_class(name), {"base_url": self.spec.miniwob_url}
        except ValueError as error:
            raise RequestError(str(error)) from None

    def _require_env(self) -> BrowserEnv:
        if self.env is None:
            raise RequestError("no episode: call reset first")
        return self.env


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """The worker's main loop: answer ``(op, args)`` requests until ``close`` or EOF.

    Replies are ``("ok", value)``, ``("bad", message)`` for a :class:`RequestError` and
    ``("fail", message)`` for anything else: the parent then kills this process.
    """
    pw = patch_browsergym(spec.launch)
    session = Session(spec)
    handlers: dict[str, Callable[..., Any]] = {
        "reset": session.reset,
        "step": session.step,
        "read_page": session.read_page,
    }
    try:
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                return
            if op == "close":
                return
            try:
                conn.send(("ok", handlers[op](*args)))
            except RequestError as error:
                conn.send(("bad", str(error)))
            except Exception as error:  # any other failure is the browser's
                conn.send(("fail", f"{type(error).__name__}: {error}"))
    except KeyboardInterrupt:
        return
    finally:
        try:
            session.close()
            pw.stop()
        except Exception:  # a dead browser cannot be closed politely
            pass
