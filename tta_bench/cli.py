"""The Hydra task behind run.py: user errors become one clear message and a non-zero exit."""

from __future__ import annotations

import sys

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tta_bench.errors import TTABenchError

EXIT_USER_ERROR = 2


def main_task(cfg: DictConfig) -> str:
    """Run one experiment; returns its run-record folder (collected by multirun callbacks)."""
    from tta_bench.experiment import run_experiment

    try:
        return str(run_experiment(cfg))
    except (TTABenchError, OmegaConfBaseException) as exc:
        # SystemExit passes through Hydra's job runner, so no traceback is printed.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
