"""Fine-tune the policy or the world model with LoRA through a curriculum of stages.

A thin entry point: Hydra composes `conf/train.yaml` (with its typed schema)
and the pipeline in `websynthesis.pipelines.train` does the work.
"""

import hydra
from omegaconf import DictConfig

from websynthesis.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from websynthesis.pipelines.train import run

    run(cfg)


if __name__ == "__main__":
    main()
