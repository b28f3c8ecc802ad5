"""WebEvolver's co-evolution rounds in one command: ``python coevolve.py rounds=3``.

A thin entry point: Hydra composes ``conf/coevolve.yaml`` and
:mod:`websynthesis.pipelines.coevolve` runs the rounds, each stage a job of the project's
train, synthesize and evaluate pipelines composed from their own configs.
"""

import hydra
from omegaconf import DictConfig

from websynthesis.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="coevolve")
def main(cfg: DictConfig) -> None:
    from websynthesis.pipelines.coevolve import run

    run(cfg)


if __name__ == "__main__":
    main()
