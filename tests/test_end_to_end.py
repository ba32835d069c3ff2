"""End-to-end runs through the real runner on the generated embedded benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_configs import compose_with

import tta_bench
from tta_bench.data.datasets import open_benchmark
from tta_bench.data.domains import BENCHMARK_CORRUPTIONS
from tta_bench.data.streams import TRANSFORMS
from tta_bench.experiment import run_experiment
from tta_bench.memory import reset_peak_memory
from tta_bench.models import create_model
from tta_bench.results import ROW_COLUMNS, is_done, run_id_of

REPO = Path(__file__).resolve().parents[1]
FEW = "data.corruptions=[gaussian_noise,fog,contrast]"


def run(embedded, tmp_path, *overrides) -> Path:
    cfg = compose_with([f"data_root={embedded['data_root']}", f"model_dir={embedded['model_dir']}",
                        "progress=false", "device=cpu", *overrides], tmp_path)
    return run_experiment(cfg)


def test_run_writes_a_valid_record(embedded, tmp_path):
    run_dir = run(embedded, tmp_path, "method=tent", "data.n_examples=200", FEW)
    assert is_done(run_dir)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert list(metrics.columns[: len(ROW_COLUMNS) - 6]) == ROW_COLUMNS[:-6]
    assert set(ROW_COLUMNS) <= set(metrics.columns)
    per_domain = metrics[metrics.domain != "all"]
    assert per_domain.domain.unique().tolist() == ["gaussian_noise", "fog", "contrast"]
    assert set(per_domain.metric) >= {"error", "nll", "brier", "ece", "n_samples", "collapse_share"}
    assert (per_domain[per_domain.metric == "n_samples"].value == 200).all()
    run_level = metrics[metrics.domain == "all"].set_index("metric").value
    errors = per_domain[per_domain.metric == "error"].value
    assert run_level["mean_error"] == pytest.approx(errors.mean())
    assert {"forgetting_clean", "forgetting_first_domain", "clean_error_before"} <= set(run_level.index)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["method"]["lr"] == 1e-3 and config["method"]["optimizer"] == "adam"
    assert run_dir.name == run_id_of(config) == metrics.run_id.iloc[0]
    cost = pd.read_parquet(run_dir / "cost.parquet").set_index("metric").value
    assert cost["images_per_second"] > 0 and cost["cost_ratio"] > 0
    curve = pd.read_parquet(run_dir / "curve.parquet")
    assert len(curve) == 3 and curve.n_seen.iloc[-1] == 600
    assert curve.cumulative_error.iloc[-1] == pytest.approx(run_level["error"])


def test_same_config_gives_identical_metrics(embedded, tmp_path):
    first = pd.read_parquet(run(embedded, tmp_path / "a", "method=tent", "data.n_examples=200", FEW) / "metrics.parquet")
    second = pd.read_parquet(run(embedded, tmp_path / "b", "method=tent", "data.n_examples=200", FEW) / "metrics.parquet")
    pd.testing.assert_frame_equal(first, second)


def test_run_id_ignores_paths_and_device(embedded, tmp_path):
    a = run(embedded, tmp_path / "a", "method=source", "data.n_examples=100", FEW)
    b = run(embedded, tmp_path / "b", "method=source", "data.n_examples=100", FEW, "progress=true")
    c = run(embedded, tmp_path / "c", "method=source", "data.n_examples=100", FEW, "seed=2")
    assert a.name == b.name != c.name


@pytest.mark.parametrize("setting", TRANSFORMS)
def test_every_setting_runs(embedded, tmp_path, setting):
    run_dir = run(embedded, tmp_path, "method=norm", f"data.setting={setting}", "data.n_examples=200",
                  "data.rounds=2", FEW)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert np.isfinite(metrics[metrics.metric == "error"].value).all()
    if setting == "label_shift":
        assert metrics.metric.str.startswith("class_count_").any()


def test_norm_beats_source_by_ten_points_on_the_full_benchmark(embedded, tmp_path):
    """The embedded benchmark's defining property (also printed by scripts/describe_embedded.py)."""
    means = {}
    for method in ("source", "norm"):
        metrics = pd.read_parquet(run(embedded, tmp_path, f"method={method}", "forgetting=false") / "metrics.parquet")
        means[method] = metrics.query("domain == 'all' and metric == 'mean_error'").value.item()
    assert means["source"] >= 0.30
    assert means["norm"] <= means["source"] - 0.10


def test_source_error_rises_with_severity(embedded):
    model = create_model("digits_c", embedded["model_dir"], embedded["data_root"], progress=False)
    bench = open_benchmark("digits_c", embedded["data_root"])
    rows = np.arange(500)
    y = torch.from_numpy(bench.labels[rows])
    mean_error = []
    for severity in (1, 3, 5):
        errs = []
        for c in BENCHMARK_CORRUPTIONS:
            x = torch.from_numpy(bench.load(c, severity, rows)).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                errs.append((model(x).argmax(1) != y).float().mean().item())
        mean_error.append(np.mean(errs))
    assert mean_error[0] < mean_error[1] < mean_error[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args, "hydra.run.dir=/tmp/tta_bench_cli_test"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_unknown_method_names_valid_options():
    proc = _cli("method=nonexistent")
    assert proc.returncode != 0
    assert "nonexistent" in proc.stderr and "norm" in proc.stderr and "tent" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_missing_data_names_files_and_source(tmp_path):
    proc = _cli("data=cifar10_c_continual", f"data_root={tmp_path}/nonexistent", f"results_dir={tmp_path}")
    assert proc.returncode != 0
    assert f"{tmp_path}/nonexistent/CIFAR-10-C" in proc.stderr
    assert "CIFAR-10-C.tar" in proc.stderr and "zenodo" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_library_api(embedded):
    x, y = tta_bench.load_domain("digits_c", "fog", 5, n_examples=300, data_root=embedded["data_root"])
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and len(y) == 300
    full, _ = tta_bench.load_domain("digits_c", "fog", 5, data_root=embedded["data_root"])
    torch.testing.assert_close(full[:300], x)  # file order
    model = tta_bench.create_model("digits_c", embedded["model_dir"], embedded["data_root"], progress=False)
    tent = tta_bench.create_method("tent", model)
    assert not tent.returns_probabilities
    errors = [(tent(x[i : i + 100]).argmax(1) != y[i : i + 100]).float().mean().item() for i in range(0, 300, 100)]
    assert all(0 <= e <= 1 for e in errors)


def test_peak_memory_is_the_runs_own_not_an_earlier_jobs(embedded, tmp_path):
    """A Hydra multirun runs jobs in one process; an earlier job's peak must not leak into the next record."""
    if not reset_peak_memory(torch.device("cpu")):
        pytest.skip("resetting the RSS high-water mark needs Linux (/proc/self/clear_refs)")
    spike = np.ones(600 * 2**20 // 8)  # 600 MiB, touched, then freed: the process high-water mark rises
    del spike
    run_dir = run(embedded, tmp_path, "method=source", "data.n_examples=100", FEW)
    cost = pd.read_parquet(run_dir / "cost.parquet").set_index("metric").value
    hwm = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith(("VmHWM", "VmRSS"))}
    assert 0 < cost["peak_memory_mb"] <= hwm["VmHWM"] / 1024
    assert cost["peak_memory_mb"] < hwm["VmRSS"] / 1024 + 300  # far below the 600 MiB spike on top of it
