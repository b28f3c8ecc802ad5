"""The BrowserGym-backed :class:`~websynthesis.env.base.WebEnv`, one browser in one worker process.

Each environment owns a worker process (:mod:`websynthesis.env.worker`) that runs BrowserGym
and its Chromium. Every request waits at most a timeout (``EnvConfig.step_timeout_s`` for a
step, ``reset_timeout_s`` for a reset, which launches a browser). A worker that times out,
dies, or reports a browser failure is killed with everything it started; the step's
:class:`~websynthesis.env.base.StepResult` carries ``error`` and ``done=True``, and the next
reset starts a new worker. A reset that fails is retried once on a new worker before
:class:`~websynthesis.env.base.EnvError` is raised.

Actions: each :class:`~websynthesis.web.actions.Action` is checked against the
environment's declared action set and the current tree first (``Action.validate``): a verb
the environment does not take, an unknown id or typing into a non-text field is reported
as ``last_action_error`` without touching the page. A valid action runs as ONE BrowserGym
step with multiaction on (``Action.to_browsergym()``), so ``type [id] [text] [1]`` is
``fill`` then ``press Enter`` in a single step and a single observation. ``stop [...]``
is sent as BrowserGym's ``send_msg_to_user`` (``report_infeasible`` for ``N/A``), which lets
the task score the final page, and ends the episode.
"""

from __future__ import annotations

import multiprocessing
import sys
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from websynthesis.config import EnvConfig
from websynthesis.data.tasks import Task
from websynthesis.env import miniwob, webarena
from websynthesis.env.base import EnvError, Observation, StepResult
from websynthesis.env.browser import LaunchOptions, find_chromium
from websynthesis.env.login import LoginSettings, site_logins
from websynthesis.env.observe import owner_of_text_id
from websynthesis.env.worker import WorkerSpec, serve
from websynthesis.web.action_sets import WEBARENA_ACTIONS, ActionSet, action_set, check_declared
from websynthesis.web.actions import Action, ActionKind
from websynthesis.web.observation import parse_axtree

# Spawn, not fork: the caller may hold threads (torch, the model server client) and a
# forked copy of them can deadlock; a spawned worker imports only what it needs.
_MP = multiprocessing.get_context("spawn")
_START_TIMEOUT_S = 60.0  # importing BrowserGym and starting Playwright, before any browser
_CLOSE_TIMEOUT_S = 5.0


class _WorkerFailure(Exception):
    """The worker timed out, died or reported a browser failure; it has been killed."""


class _RequestRefused(Exception):
    """The worker refused the request itself (unknown task, bad script)."""


class BrowserGymEnv:
    """A :class:`~websynthesis.env.base.WebEnv` over BrowserGym (see the module docstring).

    Build it with :func:`make_env`. ``max_steps`` truncates episodes; ``worker_pid`` is the
    worker's process id (``None`` when none runs), for tests and operators.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        step_timeout_s: float,
        reset_timeout_s: float,
        max_steps: int,
        actions: ActionSet = WEBARENA_ACTIONS,
    ) -> None:
        self._spec = spec
        self.actions = actions
        self.step_timeout_s = step_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self.max_steps = max_steps
        self._process: Any = None
        self._conn: Any = None
        self._observation: Observation | None = None
        self._steps = 0
        self._finalizer: weakref.finalize | None = None

    @property
    def worker_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def reset(self, task: str, seed: int) -> Observation:
        self._observation = None
        failure = ""
        for _ in range(2):  # the second attempt runs on a fresh worker
            try:
                reply = self._call("reset", (task, seed), self.reset_timeout_s)
            except _RequestRefused as refused:
                raise ValueError(str(refused)) from None
            except _WorkerFailure as error:
                failure = str(error)
                continue
            self._steps = 0
            self._observation = _to_observation(reply)
            return self._observation
        raise EnvError(f"reset of {task!r} (seed {seed}) failed twice: {failure}")

    def step(self, action: Action) -> StepResult:
        before = self._observation
        if before is None:
            raise EnvError("no running episode: reset first (or the last one ended in an error)")
        self._steps += 1
        check = check_declared(action, self.actions)
        check = action.validate(before.tree) if check else check
        if not check:
            refused = replace(before, last_action_error=f"{check.reason}: {check.message}")
            self._observation = refused
            return StepResult(refused, 0.0, False, self._steps >= self.max_steps)
        owner = owner_of_text_id(action.target or "")
        if owner is not None:
            action = replace(action, target=owner)
        try:
            reply = self._call("step", (action.to_browsergym(),), self.step_timeout_s)
        except (_WorkerFailure, _RequestRefused) as error:
            self._observation = None
            return StepResult(before, 0.0, True, False, error=f"environment failure: {error}")
        after = _to_observation(reply)
        self._observation = after
        done = bool(reply["done"]) or action.kind is ActionKind.STOP
        return StepResult(
            after,
            float(reply["reward"]),
            done,
            truncated=not done and self._steps >= self.max_steps,
            info=reply["info"] or {},
        )

    def read_page(self, url: str | None = None, script: str | None = None) -> str:
        try:
            return self._call("read_page", (url, script), self.step_timeout_s)
        except _RequestRefused as refused:
            raise ValueError(str(refused)) from None
        except _WorkerFailure as error:
            raise EnvError(f"reading the page failed: {error}") from None

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._conn = self._finalizer = None
        self._observation = None

    def __enter__(self) -> BrowserGymEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker ---------------------------------------------------------------------

    def _call(self, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        """One request/reply with the worker, started if needed; kills it on any failure."""
        fresh = self._process is None or not self._process.is_alive()
        if fresh:
            self._kill()
            parent, child = _MP.Pipe()
            process = _MP.Process(target=serve, args=(child, self._spec), daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
            self._finalizer = weakref.finalize(self, _shutdown, process, parent)
            timeout += _START_TIMEOUT_S
        try:
            self._conn.send((op, args))
            if not self._conn.poll(timeout):
                raise _WorkerFailure(f"{op} timed out after {timeout:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, OSError) as error:
            why = _start_failure(self._process) if fresh else ""
            self._kill()
            raise _WorkerFailure(f"the browser worker died during {op} ({error!r}){why}") from None
        except _WorkerFailure:
            self._kill()
            raise
        if status == "bad":
            raise _RequestRefused(value)
        if status == "fail":
            self._kill()
            raise _WorkerFailure(value)
        return value

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._process is not None:
            _kill_tree(self._process.pid)
            self._process.join(_CLOSE_TIMEOUT_S)
            self._conn.close()
        self._process = self._conn = self._finalizer = None


def login_settings(config: EnvConfig) -> LoginSettings | None:
    """How WebArena tasks log in (``None``: ``env.login=false``, they start logged out)."""
    if not config.login:
        return None
    auth_dir = config.auth_dir or str(Path("~/.cache/websynthesis/webarena_auth").expanduser())
    return LoginSettings(site_logins(config.logins), auth_dir, float(config.login_max_age_s))


def make_env(config: EnvConfig, tasks: Sequence[Task] = ()) -> BrowserGymEnv:
    """An environment for ``config``: MiniWoB++ (``config.name == "miniwob"``) or a
    self-hosted WebArena (``"webarena"``; ``tasks`` are the WebArena tasks it can reset to,
    by ``task_id``). Raises ``ChromiumNotFoundError`` when no Chromium is installed."""
    site_urls = {site: url for site, url in config.site_urls.items() if url}
    if config.name == "webarena":
        if not site_urls:
            raise ValueError("env=webarena needs env.site_urls (or WA_* environment variables)")
        if not tasks:
            raise ValueError("env=webarena needs the WebArena tasks to run")
    elif config.name != "miniwob":
        raise ValueError(f"unknown environment {config.name!r}: expected miniwob or webarena")
    launch = LaunchOptions(find_chromium(config.browser_path), webarena.site_hosts(site_urls))
    spec = WorkerSpec(
        launch=launch,
        miniwob_url=config.miniwob_url or miniwob.packaged_url(),
        headless=config.headless,
        webarena_tasks={task.task_id: task for task in tasks} if config.name == "webarena" else {},
        site_urls=site_urls,
        login=login_settings(config) if config.name == "webarena" else None,
        action_timeout_ms=config.action_timeout_ms,
    )
    return BrowserGymEnv(
        spec,
        step_timeout_s=config.step_timeout_s,
        reset_timeout_s=config.reset_timeout_s,
        max_steps=config.max_steps,
        actions=action_set(config.actions),
    )


def _to_observation(reply: dict[str, Any]) -> Observation:
    return Observation(
        tree=parse_axtree(reply["text"]),
        text=reply["text"],
        url=reply["url"],
        goal=reply["goal"],
        open_urls=tuple(reply["open_urls"]),
        last_action_error=reply["last_action_error"],
    )


def _start_failure(process: Any) -> str:
    """Why a worker that never answered died, where it can be told: with ``spawn`` a child
    imports the main module again, so a script that starts an environment at its top level
    (no ``if __name__ == "__main__":``) makes every worker fail at its own start."""
    if process is None:
        return ""
    process.join(_CLOSE_TIMEOUT_S)
    if process.exitcode is None or process.exitcode == 0:
        return ""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    hint = (
        f"; if {script} uses the environment at its top level, put that code under "
        "'if __name__ == \"__main__\":' (the browser worker is started with multiprocessing's "
        "'spawn', which imports the main module again)"
        if script
        else ""
    )
    return f": it exited with code {process.exitcode} before answering (see its stderr){hint}"


def _shutdown(process: Any, conn: Any) -> None:
    """Ask the worker to close its browser; kill it (and the browser) if it does not."""
    try:
        conn.send(("close", ()))
    except OSError:
        pass
    process.join(_CLOSE_TIMEOUT_S)
    _kill_tree(process.pid)
    process.join(_CLOSE_TIMEOUT_S)
    conn.close()


def _kill_tree(pid: int | None) -> None:
    """SIGKILL a worker and every process it started (Playwright's driver, Chromium's tree).

    Playwright starts Chromium in its own process group, so killing the worker's group
    would miss it; the process tree does not.
    """
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
