"""Where a run reports besides its record: nothing (default) or Weights & Biases (`logger=wandb`).

The `logger` config group names the class with `_target_` (instantiated through
`tta_bench.safety.instantiate`, so only tta_bench classes) and its options.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tta_bench.data.streams import StreamDomain
from tta_bench.errors import ConfigError

LOGGED_METRICS = ("error", "ece", "nll", "brier", "diverged")


class RunLogger:
    """The default logger: logs nothing. Subclasses override the three hooks."""

    def __init__(self, config: dict[str, Any], run_id: str, run_dir: Path, **options: Any):
        self.config, self.run_id, self.run_dir = config, run_id, Path(run_dir)

    def domains_finished(self, metrics: dict[str, np.ndarray], domains: Sequence[StreamDomain]) -> None:
        """Called as soon as a segment of the stream has finished, with the metrics so far."""

    def run_finished(self, tables: dict[str, pd.DataFrame]) -> None:
        """Called once the complete record has been written."""

    def finish(self, failed: bool) -> None:
        """Called always, last, whether the run succeeded or not."""


class WandbLogger(RunLogger):
    """Weights & Biases: the resolved config, per-domain metrics as domains finish, the final tidy
    table and the plots. Offline unless the environment sets WANDB_MODE (e.g. `online`)."""

    def __init__(self, config: dict[str, Any], run_id: str, run_dir: Path, project: str = "tta_bench",
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str = "offline", dir: str | None = None):
        super().__init__(config, run_id, run_dir)
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("logger=wandb needs the wandb package: pip install 'tta_bench[wandb]'") from exc
        self.wandb = wandb
        c = config
        name = f"{c['method']['name']}-{c['data']['name']}-{c['data']['setting']}-seed{c['seed']}"
        folder = Path(dir) if dir else self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags) + [run_id], name=name,
                              config={**config, "run_id": run_id}, dir=str(folder),
                              mode=os.environ.get("WANDB_MODE", mode), reinit="create_new")
        self.run.define_metric("domain/*", step_metric="domain/index")

    def domains_finished(self, metrics: dict[str, np.ndarray], domains: Sequence[StreamDomain]) -> None:
        """One history row per finished domain, keyed `domain/<metric>` with `domain/index` as x-axis."""
        for d in domains:
            row = {f"domain/{m}": float(metrics[m][d.index]) for m in LOGGED_METRICS if m in metrics}
            self.run.log({**row, "domain/index": d.index, "domain/name": d.corruption})

    def run_finished(self, tables: dict[str, pd.DataFrame]) -> None:
        """The tidy metric and cost tables, run-level numbers as summary, and the run's plots."""
        from tta_bench.report.collect import load_runs
        from tta_bench.report.plots import write_plots

        run_level = pd.concat([tables["metrics"], tables["cost"]]).query("domain == 'all'")
        for _, row in run_level.iterrows():
            self.run.summary[row["metric"]] = row["value"]
        self.run.log({name: self.wandb.Table(dataframe=tables[name]) for name in ("metrics", "cost")})
        collection = load_runs([self.run_dir])
        with tempfile.TemporaryDirectory() as tmp:
            plots = write_plots(collection.rows, collection.curves, Path(tmp))
            self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots})

    def finish(self, failed: bool) -> None:
        """Close the W&B run (exit code 1 when the run failed)."""
        self.run.finish(exit_code=1 if failed else 0)
