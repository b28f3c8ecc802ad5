"""Shared pytest fixtures and the test session's environment.

The environment is set here, before any test module imports torch or
huggingface_hub (both read it at import): nothing may reach the Hub, the tiny
model's ops run on one thread (on a busy 2-core machine more threads only
spin), W&B stays offline, and the websynthesis cache (where ``model=tiny`` is
built) is a fresh directory of this session, so tests never read a stale model
or fill the user's cache. Subprocesses started by tests inherit all of it.

Tests marked ``browser`` need the system Chromium and skip, saying why, without it.
The real WebArena corpus lives beside the checkout (``../shared``) on the
project's own machines only; a user's clone lacks it, so every test that reads
it goes through :func:`webarena_tasks_path`, which skips when it is absent.
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="websynthesis-tests-"))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WEBSYNTHESIS_CACHE"] = str(SESSION_CACHE)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``browser`` skip, saying what to install, where no Chromium is found."""
    from websynthesis.env.browser import ChromiumNotFoundError, find_chromium

    try:
        find_chromium()
    except ChromiumNotFoundError as error:
        skip = pytest.mark.skip(reason=str(error))
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random Qwen2 model, built once per session in the session cache."""
    from websynthesis.backends.tiny import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_config(tiny_model_path: Path) -> Callable[..., DictConfig]:
    """``model=tiny`` as a run composes it (its roles, grammars and budgets), on the CPU,
    with the given overrides: ``tiny_model_config("model.roles.judge.max_new_tokens=24")``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from websynthesis.config import register_configs

    def compose_model(*overrides: str) -> DictConfig:
        base = ["model=tiny", "logger=none", f"paths.cache_dir={tiny_model_path.parents[1]}"]
        register_configs()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="synthesize", overrides=[*base, "model.backend.device=cpu", *overrides]
            )
        GlobalHydra.instance().clear()
        return cfg.model

    return compose_model


def _shared_corpus() -> Path:
    override = os.environ.get("WEBSYNTHESIS_WEBARENA_TASKS")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data" / "webarena" / "tasks.jsonl"


@pytest.fixture(scope="session")
def webarena_tasks_path() -> Path:
    """Path of the 644 real WebArena tasks (with first-page trees); skips if absent."""
    path = _shared_corpus()
    if not path.is_file():
        pytest.skip(f"shared WebArena corpus not found at {path}")
    return path


@pytest.fixture(scope="session")
def adapters(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two random LoRA adapters of the tiny model (non-zero B, so they change outputs), saved
    like trained ones: ``{"policy": dir, "world_model": dir}``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(["policy", "world_model"]):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        path = tmp_path_factory.mktemp(name)
        get_peft_model(base, config).save_pretrained(path)
        out[name] = str(path)
    return out


@pytest.fixture
def serve_dir() -> Iterator[Callable[[Path], str]]:
    """Serve a directory on 127.0.0.1 (an ephemeral port) as a stand-in site; returns its
    base URL (ending in ``/``). Every server is stopped after the test."""
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def serve(folder: Path) -> str:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=os.fspath(folder), **kwargs)  # type: ignore[arg-type]

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)
