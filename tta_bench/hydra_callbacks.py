"""Hydra callbacks: after a local multirun, print the sweep's methods side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrintComparison(Callback):
    """Collect the run folders of a sweep's jobs and print one comparison table at the end."""

    def __init__(self) -> None:
        self.run_dirs: list[Path] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Remember the finished job's run folder."""
        if job_return.status == JobStatus.COMPLETED and job_return.return_value:
            self.run_dirs.append(Path(job_return.return_value))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print error and ECE per domain for every completed run of the sweep."""
        from tta_bench.results import is_done, read_record
        from tta_bench.tables import comparison_table, render_text

        groups: dict[tuple, list] = {}
        for record in (read_record(d) for d in self.run_dirs if is_done(d)):
            key = tuple(record.iloc[0][["dataset", "setting", "n_examples"]])
            groups.setdefault(key, []).append(record)
        for (dataset, setting, n_examples), records in groups.items():
            if len(records) > 1:  # single runs printed their own table already
                print(f"\nComparison on {dataset} {setting}, {n_examples} images per domain (error and ECE in %):")
                print(render_text(comparison_table(records)))
