"""Synthesize web-agent trajectories by world-model-guided MCTS over tasks.

A thin entry point: Hydra composes `conf/synthesize.yaml` (with its typed schema)
and the pipeline in `websynthesis.pipelines.synthesize` does the work.
"""

import hydra
from omegaconf import DictConfig

from websynthesis.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    from websynthesis.pipelines.synthesize import run

    run(cfg)


if __name__ == "__main__":
    main()
