"""Serve a model over the OpenAI API: ``python serve.py model=qwen2_5_7b port=8000``.

A thin entry point: Hydra composes ``conf/serve.yaml`` and
:func:`websynthesis.server.run_server` serves the model's backend under its name and those
of its configured adapters, on 127.0.0.1 unless ``host`` says otherwise.
"""

import os

import hydra
from omegaconf import DictConfig

from websynthesis.backends.stack import build_stack
from websynthesis.config import register_configs
from websynthesis.server import run_server

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    token = None
    if cfg.auth_token_env:  # the token itself only ever comes from the environment
        token = os.environ.get(cfg.auth_token_env)
        if not token:
            raise SystemExit(f"auth_token_env names {cfg.auth_token_env!r}, which is not set")
    adapters = [name for name, path in (cfg.model.get("adapters") or {}).items() if path]
    run_server(
        build_stack(cfg.model, batch=False).backend,  # the server batches in its own window
        [cfg.model.name, *adapters],
        host=cfg.host,
        port=cfg.port,
        auth_token=token,
        batch_window_ms=cfg.batch_window_ms,
        max_batch_size=cfg.max_batch_size,
    )


if __name__ == "__main__":
    main()
