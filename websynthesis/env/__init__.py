"""Live web environments: BrowserGym + MiniWoB++ (and self-hosted WebArena) in the system Chromium.

The API is in :mod:`websynthesis.env.base`; :func:`websynthesis.env.browsergym_env.make_env`
builds an environment from an ``EnvConfig``. Layer: above ``data`` (tasks), below
``synthesis``, whose :class:`~websynthesis.synthesis.browser_world.LiveBrowserWorld` searches
on these browsers. See ``tests/test_layers.py``.
"""

from websynthesis.env.base import EnvError, Observation, StepResult, WebEnv

__all__ = ["EnvError", "Observation", "StepResult", "WebEnv"]
