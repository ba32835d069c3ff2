"""`make paper-tables`: the collector, the golden rendering, filters, plots and clear errors.

The fixture records under tests/golden/records were written by the real runner
(`python run.py -m method=source,norm,tent seed=1,2 data.n_examples=20`). The expected renderings
under tests/golden/expected are regenerated with `TTA_UPDATE_GOLDEN=1 pytest tests/test_paper_tables.py`
(only after a deliberate change of the format; review the diff).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
SCRIPT = REPO / "scripts" / "paper_tables.py"


_spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
paper_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_tables)


def render(results_dir: Path, *filters: str) -> int:
    """Run the paper-tables script's main as `make paper-tables` does; its exit status."""
    return paper_tables.main(["--results-dir", str(results_dir), *filters])


def rendered_tables(results_dir: Path) -> dict[str, str]:
    """Relative path -> text of every rendered table."""
    root = results_dir / "tables"
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.suffix in (".md", ".tex")}


@pytest.fixture
def records(tmp_path: Path) -> Path:
    """A writable copy of the golden run records."""
    shutil.copytree(GOLDEN / "records", tmp_path / "results")
    return tmp_path / "results"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden records rendered once (read-only use)."""
    folder = tmp_path_factory.mktemp("rendered") / "results"
    shutil.copytree(GOLDEN / "records", folder)
    assert render(folder) == 0
    return folder


def test_golden_rendering(rendered):
    records = rendered
    got = rendered_tables(records)
    expected_root = GOLDEN / "expected"
    if os.environ.get("TTA_UPDATE_GOLDEN"):
        shutil.rmtree(expected_root, ignore_errors=True)
        shutil.copytree(records / "tables", expected_root)
    expected = {str(p.relative_to(expected_root)): p.read_text() for p in sorted(expected_root.rglob("*"))
                if p.suffix in (".md", ".tex")}
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from the golden rendering"


def test_changing_one_record_value_changes_the_rendering(records):
    path = sorted((records / "runs").glob("*/metrics.parquet"))[0]
    df = pd.read_parquet(path)
    row = (df["metric"] == "error") & (df["domain"] == "fog")
    df.loc[row, "value"] = df.loc[row, "value"] + 0.25
    df.to_parquet(path, index=False)
    assert render(records) == 0
    expected = (GOLDEN / "expected" / "digits_c-continual-digits_c" / "error.md").read_text()
    assert rendered_tables(records)["digits_c-continual-digits_c/error.md"] != expected


def test_table_numbers_are_means_of_the_records(rendered):
    records = rendered
    merged = pd.read_parquet(records / "all.parquet")
    assert merged["run_id"].nunique() == 6
    errors = merged[(merged["metric"] == "error") & (merged["domain_index"] >= 0)]
    per_run = errors.groupby(["method", "seed"])["value"].mean() * 100
    text = (records / "tables" / "digits_c-continual-digits_c" / "error.md").read_text()
    for method in ("source", "norm", "tent"):
        runs = per_run[method]
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        assert cells[1] == "2" and len(cells) == 2 + 15 + 1
        assert cells[-1] == f"{runs.mean():.1f} ± {runs.std(ddof=1):.1f}"
    tex = (records / "tables" / "digits_c-continual-digits_c" / "error.tex").read_text()
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))


def test_plots_are_written_and_non_empty(rendered):
    plots = sorted((rendered / "plots" / "digits_c-continual-digits_c").glob("*.png"))
    assert [p.name for p in plots] == ["error_per_domain.png", "error_vs_cost.png", "online_error.png", "reliability.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)


def test_filters_restrict_and_unfinished_runs_are_ignored(records):
    unfinished = sorted((records / "runs").iterdir())[0]
    (unfinished / "done").unlink()
    assert render(records, "method=tent,norm") == 0
    merged = pd.read_parquet(records / "all.parquet")
    assert set(merged["method"]) <= {"tent", "norm"}
    assert unfinished.name not in set(merged["run_id"])


@pytest.mark.parametrize("args, message", [
    ((), "no finished run records"),
    (("colour=red",), "bad filter"),
])
def test_clear_errors(tmp_path, records, capsys, args, message):
    folder = tmp_path / "empty" if not args else records
    assert render(folder, *args) == 2
    assert message in capsys.readouterr().err


def test_no_match_is_a_clear_error(records, capsys):
    assert render(records, "dataset=cifar10_c") == 2
    assert "no finished run matches dataset=cifar10_c" in capsys.readouterr().err


def test_published_numbers_only_for_matching_protocols():
    from tta_bench.report.published import Protocol, published_error

    wrn = ("cifar10_c", "wrn28_10_standard", "robustbench:cifar10/corruptions/Standard")
    assert published_error(Protocol(*wrn, "continual", 200, 10000, True), "tent")[0] == 20.0
    assert published_error(Protocol(*wrn, "continual", 128, 10000, True), "tent") is None
    assert published_error(Protocol(*wrn, "reset_each_shift", 200, 10000, True), "tent") is None
    assert published_error(Protocol(*wrn, "reset_each_shift", 200, 10000, False), "tent")[0] == 18.6


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    from tta_bench.results import atomic_write_text

    atomic_write_text(tmp_path / "x.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_method_with_its_own_batch_size_shares_the_table(records):
    """BN-alpha records batch_size 1; the table groups by the data's batch size (config.yaml)."""
    path = sorted((records / "runs").glob("*/metrics.parquet"))[0]
    df = pd.read_parquet(path)
    df["batch_size"] = 1
    df.to_parquet(path, index=False)
    assert render(records) == 0
    assert sorted(p.name for p in (records / "tables").iterdir() if p.is_dir()) == ["digits_c-continual-digits_c"]


def test_runs_of_different_source_weights_are_not_pooled(records):
    for path in sorted((records / "runs").glob("*/metrics.parquet"))[:3]:
        df = pd.read_parquet(path)
        df["weights_sha256"] = "0123456789abcdef"
        df.to_parquet(path, index=False)
    assert render(records) == 0
    groups = sorted(p.name for p in (records / "tables").iterdir() if p.is_dir())
    assert len(groups) == 2 and all(g.startswith("digits_c-continual-digits_c-b200-n20-w") for g in groups)


SNAPSHOTS = sorted(p for p in (REPO / "results" / "snapshots").glob("*") if (p / "tables").is_dir())


@pytest.mark.parametrize("snapshot", SNAPSHOTS, ids=[p.name for p in SNAPSHOTS])
def test_committed_snapshot_tables_are_what_its_records_render(snapshot, tmp_path):
    """A snapshot's committed tables come from its committed records, not from edits or older code."""
    from tta_bench.report.collect import load_collection
    from tta_bench.report.paper import write_tables

    collection = load_collection(snapshot)
    assert collection.rows["run_id"].nunique() == len(list((snapshot / "runs").glob("*/done")))
    write_tables(collection, tmp_path / "tables")
    assert rendered_tables(tmp_path) == rendered_tables(snapshot)


def test_readme_shows_the_newest_snapshots_main_table_and_a_plot():
    readme = (REPO / "README.md").read_text()
    snapshot = SNAPSHOTS[-1]
    main_table = (snapshot / "tables" / "digits_c-continual-digits_c" / "error.md").read_text()
    rows = [line for line in main_table.splitlines() if line.startswith("|")]
    assert "\n".join(rows) in readme
    plot = next(line for line in readme.splitlines() if line.startswith("![") and snapshot.name in line)
    assert (REPO / plot.split("(")[1].rstrip(")")).is_file()
