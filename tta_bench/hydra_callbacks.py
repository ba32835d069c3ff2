"""Hydra callbacks: after a multirun, print the sweep's methods side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

RUN_DIR_FILE = "run_dir.txt"  # left by each job in its Hydra output folder (cli.main_task)


def _job_number(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (-1, name)


class PrintComparison(Callback):
    """After a multirun, print the sweep's methods side by side.

    Jobs leave their run folder in their Hydra output folder, so this works for every launcher:
    submitit jobs run in other processes (or on other machines), where job callbacks run too.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print error and ECE per domain for every completed run of the sweep."""
        from tta_bench.results import is_done, read_record
        from tta_bench.tables import comparison_table, render_text

        files = sorted(Path(config.hydra.sweep.dir).glob(f"*/{RUN_DIR_FILE}"), key=_job_number)
        run_dirs = [Path(f.read_text().strip()) for f in files]
        groups: dict[tuple, list] = {}
        for record in (read_record(d) for d in run_dirs if is_done(d)):
            key = tuple(record.iloc[0][["dataset", "setting", "n_examples"]])
            groups.setdefault(key, []).append(record)
        for (dataset, setting, n_examples), records in groups.items():
            if len(records) > 1:  # single runs printed their own table already
                print(f"\nComparison on {dataset} {setting}, {n_examples} images per domain (error and ECE in %):")
                print(render_text(comparison_table(records)))
