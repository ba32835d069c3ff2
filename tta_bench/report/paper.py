"""Build the paper tables of every (dataset, setting, model) group and write them as .md and .tex."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tta_bench.report.collect import Collection, run_level_table, seed_table, with_labels
from tta_bench.report.published import Protocol, published_error
from tta_bench.report.render import Table, to_latex, to_markdown
from tta_bench.results import atomic_write_text

# The data's batch size, not the per-run `batch_size`: a method with its own batch size (BN-alpha)
# belongs to the same table as the others run on that data.
# weights_sha256 keeps runs of differently trained source models (e.g. the embedded model trained
# on another machine) out of each other's seed statistics.
GROUP_COLUMNS = ["dataset", "setting", "model", "weights", "data_batch_size", "n_examples", "shuffle", "weights_sha256"]
FORGETTING = {"forgetting_clean": 100.0, "forgetting_first_domain": 100.0}
COST = {"images_per_second": 1.0, "cost_ratio": 1.0, "peak_memory_mb": 1.0}
HEADERS = {"forgetting_clean": "clean test split", "forgetting_first_domain": "first domain",
           "images_per_second": "images/s", "cost_ratio": "cost ratio", "peak_memory_mb": "peak memory (MiB)"}


def groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows split by protocol, named `dataset-setting-model` (plus batch/size/order, then the weights
    hash, when that is ambiguous)."""
    parts = list(with_labels(rows).groupby(GROUP_COLUMNS, sort=True))
    names = [f"{k[0]}-{k[1].replace('+', '_')}-{k[2]}" for k, _ in parts]
    for suffix in (lambda k: f"-b{k[4]}-n{k[5]}" + ("" if k[6] else "-unshuffled"), lambda k: f"-w{k[7][:8]}"):
        names = [name + suffix(key) if names.count(name) > 1 else name for name, (key, _) in zip(names, parts)]
    return {name: part for name, (_, part) in zip(names, parts)}


def protocol_text(part: pd.DataFrame) -> str:
    """`dataset, setting, model; batch B, N images/domain[, unshuffled]`."""
    r = part.iloc[0]
    n = "all" if int(r["n_examples"]) < 0 else f"{int(r['n_examples']):,}"
    order = "" if r["shuffle"] else ", unshuffled"
    return f"{r['dataset']}, {r['setting']}, {r['model']}; batch {r['data_batch_size']}, {n} images/domain{order}"


def _published_columns(part: pd.DataFrame, table: Table) -> None:
    """Add `published` and `Δ` columns where the protocol matches a published number."""
    r = part.iloc[0]
    protocol = Protocol(r["dataset"], r["model"], r["weights"], r["setting"], int(r["data_batch_size"]),
                        int(r["n_examples"]), bool(r["shuffle"]))
    published, delta, sources = {}, {}, []
    for label, cells in table.rows.items():
        found = published_error(protocol, label)
        if found:
            value, source = found
            published[label], delta[label] = f"{value:.1f}", f"{cells['mean'].mean - value:+.1f}"
            sources.append(source)
    if published:
        table.extra = {"published": published, "Δ": delta}
        table.notes.append("published: " + "; ".join(dict.fromkeys(sources)) + "; Δ = ours − published.")


def group_tables(part: pd.DataFrame) -> dict[str, Table]:
    """error, ece, nll, forgetting and cost tables of one group."""
    protocol = protocol_text(part)
    columns = lambda rows: list(next(iter(rows.values())).keys())  # noqa: E731
    tables = {}
    for metric, title, scale, digits in (("error", "Error (%)", 100.0, 1), ("ece", "ECE (%)", 100.0, 1),
                                         ("nll", "NLL", 1.0, 3)):
        rows = seed_table(part, metric, scale)
        tables[metric] = Table(f"{title}: {protocol}", columns(rows), rows, digits=digits)
    _published_columns(part, tables["error"])
    if part["metric"].isin(list(FORGETTING)).any():
        rows = run_level_table(part, FORGETTING)
        tables["forgetting"] = Table(f"Forgetting (error points; frozen final state minus before): {protocol}",
                                     columns(rows), rows, headers=HEADERS)
    if part["metric"].isin(list(COST)).any():
        rows = run_level_table(part, COST)
        tables["cost"] = Table(f"Cost (machine-dependent): {protocol}", columns(rows), rows,
                               best={"images_per_second": "max"}, digits=2, headers=HEADERS)
    return tables


def write_tables(collection: Collection, out_dir: Path) -> list[Path]:
    """Render every group's tables to `<out_dir>/<group>/<table>.{md,tex}` and an index.md of all."""
    written, index = [], []
    for name, part in groups(collection.rows).items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for kind, table in group_tables(part).items():
            markdown = to_markdown(table)
            for suffix, text in ((".md", markdown), (".tex", to_latex(table))):
                atomic_write_text(folder / f"{kind}{suffix}", text)
                written.append(folder / f"{kind}{suffix}")
            index.append(markdown)
    atomic_write_text(out_dir / "index.md", "# Paper tables\n\n" + "\n".join(index))
    return written + [out_dir / "index.md"]
