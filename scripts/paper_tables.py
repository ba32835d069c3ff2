"""Collect finished run records and render the paper tables (Markdown, LaTeX) and plots (PNG).

Usage: python scripts/paper_tables.py [--results-dir results] [key=value[,value] ...]
Filters (e.g. `dataset=digits_c setting=continual method=tent,eata`) restrict what is rendered.
Writes <results-dir>/all.parquet (the merged tidy table), <results-dir>/tables/<group>/*.{md,tex},
<results-dir>/tables/index.md and <results-dir>/plots/<group>/*.png, one group per
(dataset, setting, model) protocol.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tta_bench.errors import ConfigError
from tta_bench.report.collect import apply_filters, load_collection, parse_filters, write_merged
from tta_bench.report.paper import write_tables
from tta_bench.report.plots import write_plots


def main(argv: list[str] | None = None) -> int:
    """Render everything; a clear one-line error and exit status 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results", type=Path)
    parser.add_argument("filters", nargs="*", metavar="key=value", help="restrict the runs rendered")
    args = parser.parse_args(argv)
    try:
        filters = parse_filters(args.filters)
        collection = apply_filters(load_collection(args.results_dir), filters)
        write_merged(collection, args.results_dir / "all.parquet")
        for generated in ("tables", "plots"):  # no stale files from an earlier, wider selection
            shutil.rmtree(args.results_dir / generated, ignore_errors=True)
        tables = write_tables(collection, args.results_dir / "tables")
        plots = write_plots(collection.rows, collection.curves, args.results_dir / "plots")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = collection.rows["run_id"].nunique()
    print(f"{runs} runs -> {args.results_dir / 'all.parquet'}, {len(tables)} table files under "
          f"{args.results_dir / 'tables'} (index.md), {len(plots)} plots under {args.results_dir / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
