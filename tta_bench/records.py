"""Tidy rows of a run record: per-domain and run-level metrics, cost, online curve."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tta_bench.data.streams import Stream
from tta_bench.runner import StreamResult

DOMAIN_METRICS = ("error", "nll", "brier", "ece", "n_samples", "collapse_share", "nonfinite_share",
                  "nonfinite_step_share", "diverged")
RELIABILITY = ("reliability_count", "reliability_confidence", "reliability_accuracy")
ALL = "all"


def _frame(ids: dict[str, Any], data: Any) -> pd.DataFrame:
    df = pd.DataFrame(data)
    for key, value in reversed(list(ids.items())):
        df.insert(0, key, value)
    return df


def _run_level(metric: str, value: float) -> dict[str, Any]:
    return {"domain": ALL, "severity": 0, "domain_index": -1, "round": 0, "metric": metric, "value": float(value)}


def metric_rows(ids: dict[str, Any], stream: Stream, per_domain: dict[str, np.ndarray],
                forgetting: dict[str, float], class_counts: bool) -> pd.DataFrame:
    """One row per domain x metric, plus run-level rows with domain 'all'."""
    rows = []
    for d in stream.domains:
        where = {"domain": d.corruption, "severity": d.severity, "domain_index": d.index, "round": d.round}
        rows += [{**where, "metric": m, "value": float(per_domain[m][d.index])} for m in DOMAIN_METRICS]
        if class_counts:
            rows += [{**where, "metric": f"class_count_{c}", "value": float(n)}
                     for c, n in enumerate(stream.class_counts[d.index])]
    rows += [_run_level(m, per_domain[m][-1]) for m in DOMAIN_METRICS]
    rows.append(_run_level("mean_error", np.nanmean(per_domain["error"][:-1])))
    rows += [_run_level(f"{m}_{k}", v) for m in RELIABILITY for k, v in enumerate(per_domain[m])]
    rows += [_run_level(k, v) for k, v in forgetting.items()]
    return _frame(ids, rows)


def cost_rows(ids: dict[str, Any], result: StreamResult, plain_seconds: float, batch_size: int,
              peak_memory_mb: float) -> pd.DataFrame:
    """Machine-dependent measurements: wall time, throughput, cost ratio, peak memory."""
    n = int(result.batch_sizes.sum())
    per_image = result.adapt_seconds / max(n, 1)
    values = {
        "adapt_seconds": result.adapt_seconds,
        "images_per_second": n / result.adapt_seconds if result.adapt_seconds > 0 else float("nan"),
        "plain_forward_ms": 1000 * plain_seconds,
        "cost_ratio": per_image / (plain_seconds / batch_size),
        "peak_memory_mb": peak_memory_mb,
    }
    return _frame(ids, [_run_level(k, v) for k, v in values.items()])


def curve_rows(ids: dict[str, Any], result: StreamResult) -> pd.DataFrame:
    """Online error after every batch: batch error and cumulative error over the stream."""
    n_seen = np.cumsum(result.batch_sizes)
    return _frame(ids, {
        "batch": np.arange(len(n_seen)),
        "n_seen": n_seen,
        "domain_index": result.batch_domains,
        "batch_error": result.batch_errors / result.batch_sizes,
        "cumulative_error": np.cumsum(result.batch_errors) / n_seen,
    })
