"""Collect finished run records into one tidy table, filter it, and aggregate over seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tta_bench.errors import ConfigError
from tta_bench.results import RECORD_FILES, atomic_write, is_done
from tta_bench.tables import domain_labels

GROUP_KEYS = ("dataset", "setting", "model")
FILTER_KEYS = ("dataset", "setting", "model", "method", "seed", "batch_size", "n_examples", "run_id")


@dataclass
class Collection:
    """Every finished run under a results folder: tidy metric+cost rows and the online curves."""

    rows: pd.DataFrame
    curves: pd.DataFrame


def _config_columns(run_dir: Path) -> dict[str, object]:
    """Fields of config.yaml the tables need: the data's batch size and shuffling (protocol; the
    `batch_size` column holds the size a method actually used, e.g. BN-alpha's 1) and the method's
    settings (row labels)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    method = {k: v for k, v in config["method"].items() if k != "name"}
    return {"data_batch_size": int(config["data"]["batch_size"]), "shuffle": bool(config["data"].get("shuffle", True)),
            "method_config": yaml.safe_dump(method, sort_keys=True)}


def load_collection(results_dir: Path) -> Collection:
    """Read every run folder with a `done` marker (unfinished runs are ignored)."""
    runs = sorted(p for p in (Path(results_dir) / "runs").glob("*") if is_done(p))
    if not runs:
        raise ConfigError(f"no finished run records under {Path(results_dir) / 'runs'}; "
                          "run experiments first (python run.py ...) or pass RESULTS_DIR=<folder>")
    return load_runs(runs)


def load_runs(runs: list[Path]) -> Collection:
    """Read the given finished run folders."""
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in RECORD_FILES}
    for run_dir in runs:
        extra = _config_columns(run_dir)
        for name in RECORD_FILES:
            tables[name].append(pd.read_parquet(run_dir / f"{name}.parquet").assign(**extra))
    rows = pd.concat(tables["metrics"] + tables["cost"], ignore_index=True)
    return Collection(rows, pd.concat(tables["curve"], ignore_index=True))


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`key=value[,value]` arguments as a dict; unknown keys are errors naming the valid ones."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise ConfigError(f"bad filter {item!r}; use key=value with key one of {', '.join(FILTER_KEYS)}")
        filters[key] = value.split(",")
    return filters


def apply_filters(collection: Collection, filters: dict[str, list[str]]) -> Collection:
    """The runs whose columns take one of the given values for every filter key."""
    keep = pd.Series(True, index=collection.rows.index)
    for key, values in filters.items():
        keep &= collection.rows[key].astype(str).isin(values)
    run_ids = collection.rows.loc[keep, "run_id"].unique()
    if len(run_ids) == 0:
        wanted = " ".join(f"{k}={','.join(v)}" for k, v in filters.items())
        raise ConfigError(f"no finished run matches {wanted}")
    return Collection(collection.rows[collection.rows["run_id"].isin(run_ids)].reset_index(drop=True),
                      collection.curves[collection.curves["run_id"].isin(run_ids)].reset_index(drop=True))


def write_merged(collection: Collection, path: Path) -> None:
    """The merged tidy table (metrics and cost rows of every run), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: collection.rows.to_parquet(tmp, index=False))


def with_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Add `label`: the method name, plus the differing settings when one method was run with several."""
    rows = rows.copy()
    rows["label"] = rows["method"]
    for method, part in rows.groupby("method"):
        configs = part["method_config"].unique()
        if len(configs) > 1:
            for config in configs:
                rows.loc[(rows["method"] == method) & (rows["method_config"] == config), "label"] = \
                    f"{method} ({_difference(config, configs)})"
    return rows


def _difference(config: str, configs: np.ndarray) -> str:
    """`key=value` of the fields in which `config` differs from the other configs."""
    mine, others = yaml.safe_load(config), [yaml.safe_load(c) for c in configs]
    keys = sorted(k for k in mine if any(o.get(k) != mine[k] for o in others))
    return ", ".join(f"{k}={mine[k]}" for k in keys)


@dataclass
class Cell:
    """Mean and standard deviation over seeds of one table cell (percent or raw), and the seed count."""

    mean: float
    std: float
    n: int
    diverged: bool = False  # some seed had non-finite outputs or gradients here (marked † in tables)


def domain_order(group: pd.DataFrame) -> list[str]:
    """Domain labels of a (dataset, setting, model) group in benchmark (stream) order."""
    per_domain = group[(group["domain_index"] >= 0)].drop_duplicates(["domain_index", "domain", "severity", "round"])
    per_domain = per_domain.sort_values("domain_index")
    return list(dict.fromkeys(domain_labels(per_domain)))


def seed_table(group: pd.DataFrame, metric: str, scale: float = 100.0) -> dict[str, dict[str, Cell]]:
    """label -> column -> Cell over seeds: per-domain values of `metric` and their mean over domains."""
    part = group[(group["metric"] == metric) & (group["domain_index"] >= 0)].copy()
    part["column"] = domain_labels(part)
    wide = part.pivot_table(index=["label", "seed"], columns="column", values="value", aggfunc="first")
    # reindex, not [], because pivot_table drops all-NaN columns (a diverged domain's NLL).
    wide = wide.reindex(columns=domain_order(group)) * scale
    wide["mean"] = wide.mean(axis=1, skipna=False)  # undefined for a domain -> undefined on average
    cells = _cells(wide)
    for label, column in _diverged(group):
        cells[label][column].diverged = cells[label]["mean"].diverged = True
    return cells


def _diverged(group: pd.DataFrame) -> set[tuple[str, str]]:
    """(label, domain column) pairs where any seed's run flagged the domain as diverged."""
    part = group[(group["metric"] == "diverged") & (group["domain_index"] >= 0)].copy()
    if part.empty:  # records written before divergence was recorded
        return set()
    part["column"] = domain_labels(part)
    flagged = part[part["value"] > 0]
    return set(zip(flagged["label"], flagged["column"]))


def run_level_table(group: pd.DataFrame, metrics: dict[str, float]) -> dict[str, dict[str, Cell]]:
    """label -> metric -> Cell over seeds of run-level metrics (domain 'all'), each scaled."""
    part = group[(group["domain"] == "all") & group["metric"].isin(list(metrics))]
    wide = part.pivot_table(index=["label", "seed"], columns="metric", values="value", aggfunc="first")
    wide = wide[[m for m in metrics if m in wide.columns]]
    for m in wide.columns:
        wide[m] = wide[m] * metrics[m]
    return _cells(wide)


def _cells(wide: pd.DataFrame) -> dict[str, dict[str, Cell]]:
    """Aggregate a (label, seed) x column frame over seeds (sample std, 0 for one seed)."""
    out: dict[str, dict[str, Cell]] = {}
    for label, rows in wide.groupby(level="label", sort=True):
        n = len(rows)
        out[label] = {c: Cell(float(rows[c].mean()), float(rows[c].std(ddof=1)) if n > 1 else 0.0, n)
                      for c in wide.columns}
    return out
