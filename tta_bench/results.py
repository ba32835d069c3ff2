"""Run records: tidy metric tables, the resolved config and a `done` marker, written atomically.

`results_dir/runs/<run_id>/` holds
- `metrics.parquet`: one row per run x domain x metric; a pure function of the config, so
  reruns give identical values. Run-level metrics use domain "all".
- `cost.parquet`: the same schema for machine-dependent measurements (time, throughput, memory).
- `curve.parquet`: the online error after every batch.
- `config.yaml`: the resolved config, method hyperparameters filled in.
- `environment.json`: versions, device, git commit (and whether the tree was dirty), packages.
- `checkpoint.pt`: only while a run is unfinished; the state at the last domain boundary.
- `done`: written last; a folder without it is an unfinished run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

# Keys that change where things are read or written, or how they are shown, but not the result.
NON_SEMANTIC_KEYS = ("data_root", "model_dir", "results_dir", "device", "progress", "force", "checkpoint", "logger")
RECORD_FILES = ("metrics", "cost", "curve")
_UMASK = os.umask(0)
os.umask(_UMASK)
ID_COLUMNS = ["run_id", "method", "model", "dataset", "setting", "seed", "batch_size", "n_examples"]
ROW_COLUMNS = ID_COLUMNS + ["domain", "severity", "domain_index", "round", "metric", "value"]


def run_id_of(config: dict[str, Any]) -> str:
    """Hash of the resolved config without non-semantic keys (paths, device, display)."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    blob = json.dumps(semantic, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_dir_of(results_dir: str | Path, run_id: str) -> Path:
    """Folder of one run record."""
    return Path(results_dir) / "runs" / run_id


def atomic_write(path: Path, write: Any) -> None:
    """Write through `write(tmp_path)` to a temp file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def start_record(run_dir: Path) -> None:
    """Create the folder and remove a stale `done`, so a crash never leaves a record that looks complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "done").unlink(missing_ok=True)


def write_record(run_dir: Path, tables: dict[str, pd.DataFrame], config_yaml: str,
                 environment: dict[str, Any] | None = None) -> None:
    """Write every table, the config and the environment atomically, then the `done` marker."""
    for name, df in tables.items():
        atomic_write(run_dir / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    if environment is not None:
        atomic_write_text(run_dir / "environment.json", json.dumps(environment, indent=1) + "\n")
    atomic_write_text(run_dir / "done", pd.Timestamp.now(tz="UTC").isoformat() + "\n")


def is_done(run_dir: Path) -> bool:
    """Whether the run record is complete."""
    return (Path(run_dir) / "done").is_file()


def read_record(run_dir: Path, name: str = "metrics") -> pd.DataFrame:
    """One table of a complete run record."""
    if not is_done(run_dir):
        raise FileNotFoundError(f"{run_dir} has no complete run record (no 'done' marker)")
    return pd.read_parquet(Path(run_dir) / f"{name}.parquet")
