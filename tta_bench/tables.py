"""Text tables of run records for the terminal: one run's domains, or several methods side by side."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

PERCENT_METRICS = ("error", "ece", "collapse_share", "nonfinite_share")


def _domain_labels(df: pd.DataFrame) -> pd.Series:
    """`fog`, or `fog@3` when a stream has several severities, plus `#r` for recurring rounds."""
    several = df["severity"].nunique() > 1
    label = df["domain"] + (("@" + df["severity"].astype(str)) if several else "")
    return label + df["round"].map(lambda r: f"#{r}" if r else "")


def domain_table(metrics: pd.DataFrame, columns: Sequence[str] = ("error", "ece")) -> pd.DataFrame:
    """Rows = domains in stream order plus `mean`; columns = metrics (percent where applicable)."""
    per_domain = metrics[(metrics["domain_index"] >= 0) & metrics["metric"].isin(columns)].copy()
    per_domain["label"] = _domain_labels(per_domain)
    table = per_domain.pivot_table(index=["domain_index", "label"], columns="metric", values="value", sort=True)
    table = table.droplevel(0)[list(columns)]
    table.loc["mean"] = table.mean()
    for c in columns:
        if c in PERCENT_METRICS:
            table[c] *= 100
    table.index.name = "domain"
    return table


def comparison_table(records: Sequence[pd.DataFrame], columns: Sequence[str] = ("error", "ece")) -> pd.DataFrame:
    """Domain tables of several runs side by side, columns (method, metric)."""
    parts = {f"{df['method'].iloc[0]}": domain_table(df, columns) for df in records}
    return pd.concat(parts, axis=1)


def render_text(table: pd.DataFrame, digits: int = 1) -> str:
    """Fixed-point text rendering of a table."""
    return table.to_string(float_format=lambda v: f"{v:.{digits}f}")
