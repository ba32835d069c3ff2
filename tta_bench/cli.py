"""The Hydra task behind run.py: user errors become one clear message and a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tta_bench.errors import Interrupted, TTABenchError
from tta_bench.hydra_callbacks import RUN_DIR_FILE

EXIT_USER_ERROR = 2


def main_task(cfg: DictConfig) -> str:
    """Run one experiment; returns its run-record folder (collected by multirun callbacks)."""
    from tta_bench.experiment import run_experiment
    from tta_bench.safety import check_targets

    # SystemExit passes through Hydra's job runner, so no traceback is printed.
    try:
        check_targets(cfg, HydraConfig.get() if HydraConfig.initialized() else None)
        run_dir = run_experiment(cfg)
        if HydraConfig.initialized():  # for the end-of-sweep comparison (hydra_callbacks.PrintComparison)
            (Path(HydraConfig.get().runtime.output_dir) / RUN_DIR_FILE).write_text(f"{run_dir.resolve()}\n")
        return str(run_dir)
    except Interrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (TTABenchError, OmegaConfBaseException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def check_command_line(argv: list[str]) -> None:
    """Refuse foreign `_target_` overrides before Hydra instantiates anything (exit status 2)."""
    from tta_bench.safety import check_override_targets

    try:
        check_override_targets([a for a in argv if not a.startswith("-")])
    except TTABenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
