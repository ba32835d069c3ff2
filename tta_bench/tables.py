"""Text tables of run records for the terminal: one run's domains, or several methods side by side."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

PERCENT_METRICS = ("error", "ece", "collapse_share", "nonfinite_share")


def domain_labels(df: pd.DataFrame) -> pd.Series:
    """`fog`; `fog@3` when a stream has several severities; ` r2` for recurring rounds; ` (2)` for a
    second visit of the same domain (gradual streams go up and down the severities)."""
    several = df["severity"].nunique() > 1
    label = df["domain"] + (("@" + df["severity"].astype(str)) if several else "")
    label = label + df["round"].map(lambda r: f" r{r}" if r else "")
    visit = df.groupby(label)["domain_index"].rank(method="dense").astype(int)
    return label + visit.map(lambda k: f" ({k})" if k > 1 else "")


def domain_table(metrics: pd.DataFrame, columns: Sequence[str] = ("error", "ece")) -> pd.DataFrame:
    """Rows = domains in stream order plus `mean`; columns = metrics (percent where applicable)."""
    per_domain = metrics[(metrics["domain_index"] >= 0) & metrics["metric"].isin(columns)].copy()
    per_domain["label"] = domain_labels(per_domain)
    table = per_domain.pivot_table(index=["domain_index", "label"], columns="metric", values="value", sort=True)
    table = table.droplevel(0)[list(columns)]
    table.loc["mean"] = table.mean()
    for c in columns:
        if c in PERCENT_METRICS:
            table[c] *= 100
    diverged = _diverged_labels(metrics)
    if diverged:
        table["flag"] = ["diverged" if label in diverged or (label == "mean") else "" for label in table.index]
    table.index.name = "domain"
    return table


def _diverged_labels(metrics: pd.DataFrame) -> set[str]:
    """Domain labels flagged as diverged (non-finite outputs or gradients) in a run's metrics."""
    rows = metrics[metrics["domain_index"] >= 0].copy()
    rows["label"] = domain_labels(rows)
    return set(rows.loc[(rows["metric"] == "diverged") & (rows["value"] > 0), "label"])


def _run_labels(records: Sequence[pd.DataFrame]) -> list[str]:
    """Method names, extended by the fields that differ when one method appears several times."""
    first = pd.DataFrame([df.iloc[0] for df in records])
    if first["method"].is_unique:
        return first["method"].tolist()
    varying = [c for c in ("model", "setting", "seed", "batch_size", "n_examples") if first[c].nunique() > 1]
    return [" ".join([row["method"]] + [f"{c}={row[c]}" for c in varying or ["run_id"]])
            for _, row in first.iterrows()]


def comparison_table(records: Sequence[pd.DataFrame], columns: Sequence[str] = ("error", "ece")) -> pd.DataFrame:
    """Domain tables of several runs side by side, columns (run label, metric)."""
    return pd.concat({label: domain_table(df, columns) for label, df in zip(_run_labels(records), records)}, axis=1)


def run_summary(metrics: pd.DataFrame, cost: pd.DataFrame) -> str:
    """One line with the run-level numbers: mean error, forgetting, throughput, cost ratio."""
    values = pd.concat([metrics, cost]).query("domain == 'all'").set_index("metric")["value"]
    parts = [f"mean error {100 * values['mean_error']:.1f}%"]
    for key, label in (("forgetting_clean", "forgetting clean"), ("forgetting_first_domain", "first domain")):
        if key in values:
            parts.append(f"{label} {100 * values[key]:+.1f}")
    parts.append(f"{values['images_per_second']:.0f} img/s, cost ratio {values['cost_ratio']:.2f}")
    n_diverged = metrics.query("metric == 'diverged' and domain_index >= 0")["value"].gt(0).sum()
    if n_diverged:
        parts.append(f"DIVERGED in {n_diverged} domain(s): non-finite outputs or gradients (flagged in the record)")
    return "; ".join(parts)


def render_text(table: pd.DataFrame, digits: int = 1) -> str:
    """Fixed-point text rendering of a table."""
    return table.to_string(float_format=lambda v: f"{v:.{digits}f}")
