"""Evaluate an agent (or a world model) and report success rates and pass@k.

A thin entry point: Hydra composes `conf/evaluate.yaml` (with its typed schema)
and the pipeline in `websynthesis.pipelines.evaluate` does the work.
"""

import hydra
from omegaconf import DictConfig

from websynthesis.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from websynthesis.pipelines.evaluate import run

    run(cfg)


if __name__ == "__main__":
    main()
