"""PNG plots of one (dataset, setting, model) group: per-domain error, online error, reliability, cost."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display on clusters and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tta_bench.report.collect import domain_order, run_level_table, seed_table  # noqa: E402
from tta_bench.report.render import ordered_labels  # noqa: E402
from tta_bench.results import atomic_write  # noqa: E402


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def styles(labels: list[str]) -> dict[str, dict]:
    """A distinct colour (tab20) and line style/marker per method, the same in every plot of a group."""
    cmap = plt.get_cmap("tab20")
    return {label: {"color": cmap(i % 20), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                    "marker": MARKERS[i % len(MARKERS)]} for i, label in enumerate(ordered_labels(labels))}


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write a figure atomically and close it (room at the top for a suptitle)."""
    fig.tight_layout(rect=(0, 0, 1, 0.96 if fig.get_suptitle() else 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def error_per_domain(part: pd.DataFrame, title: str, path: Path) -> Path:
    """Error (%) per domain, one line per method (mean over seeds, shaded ± std)."""
    rows = seed_table(part, "error")
    domains = domain_order(part)
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(domains)), 4.5))
    x = np.arange(len(domains))
    style = styles(list(rows))
    for label in ordered_labels(list(rows)):
        mean = np.array([rows[label][d].mean for d in domains])
        std = np.array([rows[label][d].std for d in domains])
        ax.plot(x, mean, ms=3, label=f"{label} ({rows[label]['mean'].mean:.1f})", **style[label])
        ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=style[label]["color"])
    ax.set_xticks(x, domains, rotation=45, ha="right")
    ax.set(title=f"Error per domain: {title}", xlabel="domain (stream order)", ylabel="error (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="method (mean)", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def online_error(part: pd.DataFrame, curves: pd.DataFrame, title: str, path: Path) -> Path:
    """Cumulative online error over the stream per method, domain boundaries as dotted lines."""
    curves = curves[curves["run_id"].isin(part["run_id"].unique())]
    labels = part.drop_duplicates("run_id").set_index("run_id")["label"]
    curves = curves.assign(label=curves["run_id"].map(labels))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    style = styles(list(curves["label"].unique()))
    for label in ordered_labels(list(curves["label"].unique())):
        mean = curves[curves["label"] == label].groupby("n_seen")["cumulative_error"].mean()
        ax.plot(mean.index, 100 * mean.values, label=label, lw=1.2, color=style[label]["color"],
                linestyle=style[label]["linestyle"])
    first = curves[curves["run_id"] == curves["run_id"].iloc[0]]
    change = first["domain_index"].ne(first["domain_index"].shift()).to_numpy()
    starts = first["n_seen"].to_numpy() - np.diff(np.r_[0, first["n_seen"].to_numpy()])
    for position in starts[change][1:]:
        ax.axvline(position, color="grey", ls=":", lw=0.8)
    ax.set(title=f"Online error: {title}", xlabel="images seen (dotted: domain changes)",
           ylabel="cumulative error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def reliability_bins(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin, summed over runs: sample count, confidence sum and correct count."""
    part = rows[rows["metric"].str.startswith("reliability_")]
    kind_bin = part["metric"].str.extract(r"reliability_(\w+)_(\d+)$")
    wide = (part.assign(kind=kind_bin[0], k=kind_bin[1].astype(int))
            .pivot_table(index=["run_id", "k"], columns="kind", values="value", aggfunc="first", dropna=False)
            .fillna(0.0))  # an empty bin has count 0 and NaN confidence/accuracy
    by_bin = lambda s: s.groupby(level="k").sum().to_numpy()  # noqa: E731
    return (by_bin(wide["count"]), by_bin(wide["confidence"] * wide["count"]),
            by_bin(wide["accuracy"] * wide["count"]))


def reliability(part: pd.DataFrame, title: str, path: Path) -> Path:
    """Reliability diagram per method: accuracy per confidence bin against the diagonal (all seeds)."""
    run_level = part[part["domain"] == "all"]
    labels = ordered_labels(list(part["label"].unique()))
    cols = min(4, len(labels))
    n_rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.2 * n_rows + 0.4), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        count, conf, correct = reliability_bins(run_level[run_level["label"] == label])
        centers = (np.arange(len(count)) + 0.5) / len(count)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(count > 0, correct / count, 0.0)
        ax.bar(centers, accuracy, width=1 / len(count), edgecolor="black", lw=0.4, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", lw=1, label="perfect calibration")
        ece = np.abs(conf - correct).sum() / count.sum()
        # two lines: long method names (rmt_source_free) overflow a one-line title
        ax.set(title=f"{label}\npooled ECE {100 * ece:.1f}%", xlim=(0, 1), ylim=(0, 1),
               xlabel="confidence", ylabel="accuracy")
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability: {title}", fontsize=10)
    return _save(fig, path)


def error_vs_cost(part: pd.DataFrame, title: str, path: Path) -> Path:
    """Mean error against the cost ratio (method step time / plain forward), one point per method."""
    errors = seed_table(part, "error")
    cost = run_level_table(part, {"cost_ratio": 1.0})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    labels = [lbl for lbl in errors if lbl in cost]
    style = styles(labels)
    for label in ordered_labels(labels):  # a legend instead of annotations: labels never overlap
        ax.scatter(cost[label]["cost_ratio"].mean, errors[label]["mean"].mean, s=40, label=label,
                   color=style[label]["color"], marker=style[label]["marker"])
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f"Error vs cost: {title}", fontsize=10)
    ax.set(xlabel="cost ratio (log scale; 1 = plain forward)", ylabel="mean error (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def write_plots(rows: pd.DataFrame, curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The four plots of every group under `<out_dir>/<group>/`."""
    from tta_bench.report.paper import groups, protocol_text

    written = []
    for name, part in groups(rows).items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        title = protocol_text(part)
        written += [error_per_domain(part, title, folder / "error_per_domain.png"),
                    online_error(part, curves, title, folder / "online_error.png"),
                    reliability(part, title, folder / "reliability.png")]
        if part["metric"].eq("cost_ratio").any():
            written.append(error_vs_cost(part, title, folder / "error_vs_cost.png"))
    return written
