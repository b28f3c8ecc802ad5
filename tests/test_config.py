"""Hydra composition: every primary config composes, and bad overrides fail at compose time."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from websynthesis.config import SearchConfig, register_configs
from websynthesis.search import SearchSettings
from websynthesis.synthesis.settings import DERIVED, SHARED

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
PRIMARY = ("train", "synthesize", "evaluate", "serve")


@pytest.fixture(autouse=True)
def _hydra():
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_configs_compose(name: str) -> None:
    cfg = compose(config_name=name, overrides=["logger=none"] if name != "serve" else [])
    assert cfg.task_name == name
    assert cfg.model.name == "tiny"
    assert cfg.model.roles.policy.template == "policy"


@pytest.mark.parametrize("name", PRIMARY)
def test_per_request_http_lines_are_debug_not_info(name: str) -> None:
    cfg = compose(config_name=name, return_hydra_config=True)
    loggers = cfg.hydra.job_logging.loggers
    assert loggers.httpx.level == loggers.httpcore.level == "WARNING"
    assert cfg.hydra.job_logging.root.level == "INFO"  # the project's own lines stay


def test_every_group_option_composes() -> None:
    groups = {
        "synthesize": [
            "taskset=demo",
            "taskset=webarena",
            "search=default",
            "search=small",
            "model=qwen2_5_7b",
            "logger=csv",
            "logger=wandb",
            "world=model",
            "world=browser",
            "env=miniwob",
            "env=webarena",
        ],
        "train": ["curriculum=bc_only", "trainer=cpu", "trainer=gpu"],
        "evaluate": ["env=webarena", "env=miniwob", "env=miniwob_suite"],
    }
    for name, overrides in groups.items():
        for override in overrides:
            compose(config_name=name, overrides=[override])


def test_search_small_extends_default() -> None:
    cfg = compose(config_name="synthesize", overrides=["search=small"])
    assert cfg.search.iterations == 4 and cfg.search.exploration_constant == 0.7


def test_the_search_group_holds_the_core_knobs_under_their_names() -> None:
    """One search schema: ``cfg.search`` is the core's knobs (less the ones derived from the
    reward scale and the job) plus how trees run together; nothing else."""
    web = {f.name for f in fields(SearchConfig)}
    core = {f.name for f in fields(SearchSettings)}
    assert set(SHARED) == core - set(DERIVED) and set(DERIVED) <= core
    assert web - set(SHARED) == {"exploration_constant", "concurrent_trees", "in_flight_per_tree"}
    cfg = compose(config_name="synthesize")
    assert set(cfg.search) == web
    assert cfg.model.batching.enabled and cfg.budget.tokens is None
    assert cfg.world.accept_malformed_pages is False


def test_synthesize_searches_the_world_model_unless_told_otherwise() -> None:
    cfg = compose(config_name="synthesize")
    assert cfg.world.name == "model" and cfg.env.name == "miniwob"
    cfg = compose(config_name="synthesize", overrides=["world=browser", "world.seeds=[0,1,2]"])
    assert cfg.world.name == "browser" and cfg.world.seeds == [0, 1, 2]


def test_experiment_is_added_with_plus() -> None:
    cfg = compose(config_name="synthesize", overrides=["+experiment=demo"])
    assert cfg.tags == ["demo"] and cfg.logger == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.iterations=abc", "could not be converted to Integer"),
        ("search.iteratons=5", "Key 'iteratons' not in 'SearchConfig'"),
        ("model.batching.enabled=maybe", "is not a valid bool"),
        ("model.roles.policy.temperature=hot", "could not be converted to Float"),
        ("shard=first", "could not be converted to Integer"),
        ("serach=small", "Could not override 'serach'"),
        ("search=huge", "Could not find 'search/huge'"),
        ("world=browsr", "Could not find 'world/browsr'"),
        ("world.seed=3", "Key 'seed' not in 'WorldConfig'"),
        ("world.seeds=[one]", "could not be converted to Integer"),
        ("env.pool_sise=2", "Key 'pool_sise' not in 'EnvConfig'"),
    ],
)
def test_bad_overrides_fail_at_compose_time(override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose(config_name="synthesize", overrides=[override])
    chain = f"{info.value} {info.value.__cause__}"
    assert message in chain


def test_no_secret_fields_in_any_config() -> None:
    for name in PRIMARY:
        text = OmegaConf.to_yaml(compose(config_name=name))
        assert "api_key:" not in text and "token:" not in text


@pytest.mark.parametrize("profile", ["full", "mini"])
@pytest.mark.parametrize("stage", ["world_model", "reward_model"])
def test_the_evidence_profiles_train_overrides_compose(profile: str, stage: str) -> None:
    """Each profile's overrides of a training stage compose with train.py's config: a key
    missing from the config would otherwise fail only when that stage starts, deep in a run."""
    evidence = compose(config_name="learning_evidence", overrides=[f"evidence={profile}"])
    overrides = [*evidence.overrides.common, *evidence.overrides[stage]]
    cfg = compose(config_name="train", overrides=["logger=none", *overrides])
    assert cfg.task_name == stage
    if stage == "reward_model":
        assert cfg.data.reward.balance is True and cfg.data.reward.unresolved == "skip"


def test_the_backend_group_serves_the_model_or_one_role_from_a_server() -> None:
    url = "model.backend.base_url=http://127.0.0.1:8000/v1"
    cfg = compose(config_name="synthesize", overrides=["backend@model.backend=vllm", url])
    assert cfg.model.backend._target_.endswith("OpenAIBackend")
    assert (cfg.model.backend.grammar_mode, cfg.model.backend.model) == ("vllm", "tiny")
    assert cfg.model.role_backends == {}
    one = ["+backend@model.role_backends.reward=sglang", "model.role_backends.reward.base_url=x"]
    cfg = compose(config_name="train", overrides=["logger=none", *one])
    assert cfg.model.backend._target_.endswith("LocalBackend")
    assert cfg.model.role_backends.reward.grammar_mode == "sglang"
