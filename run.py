"""Entry point: `python run.py method=tent data=digits_c_continual seed=2` (Hydra)."""

import sys

import hydra
from omegaconf import DictConfig

from tta_bench.cli import check_command_line


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """Compose the config and run one experiment."""
    from tta_bench.cli import main_task

    return main_task(cfg)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
