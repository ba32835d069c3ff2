"""End-to-end runs on fixtures in the real layouts with the real architectures (random weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tta_bench.fixtures import checkpoints, cifar_c, imagenet_c

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("real")
    paths = {"data": base / "data", "models": base / "models", "torch_home": base / "th", "results": base / "results"}
    rng = np.random.default_rng(0)
    cifar_c(paths["data"], 16, rng)
    cifar_c(paths["data"], 16, rng, "CIFAR-100-C", 100)
    imagenet_c(paths["data"], 4, 1, rng, corruptions=("fog",))
    checkpoints(paths["models"], paths["torch_home"])
    return paths


def _run(real, *overrides: str, model_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {"TORCH_HOME": str(real["torch_home"]), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "run.py", f"data_root={real['data']}",
                           f"model_dir={model_dir or real['models']}",
                           f"results_dir={real['results']}", "progress=false", *overrides],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def _record(proc: subprocess.CompletedProcess, real) -> pd.DataFrame:
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = real["results"] / "runs" / proc.stdout.split("(run ")[1].split(",")[0]
    assert (run_dir / "done").is_file()
    return pd.read_parquet(run_dir / "metrics.parquet")


def test_cifar10_c_with_wrn28_10(real):
    proc = _run(real, "method=tent", "data=cifar10_c_continual", "data.corruptions=[fog,snow]", "data.n_examples=8",
                "data.batch_size=4")
    metrics = _record(proc, real)
    assert metrics.model.iloc[0] == "wrn28_10_standard"
    assert metrics.weights.iloc[0] == "robustbench:cifar10/corruptions/Standard"
    assert metrics.model_parameters.iloc[0] == 36_479_194
    assert (metrics.query("metric == 'n_samples' and domain != 'all'").value == 8).all()


def test_cifar100_c_with_resnext29(real):
    proc = _run(real, "method=norm", "data=cifar100_c_continual", "data.corruptions=[fog]", "data.n_examples=8")
    metrics = _record(proc, real)
    assert metrics.model.iloc[0] == "resnext29_augmix" and metrics.model_parameters.iloc[0] == 6_900_132


def test_imagenet_c_with_resnet50(real):
    proc = _run(real, "method=tent", "data=imagenet_c_continual", "data.corruptions=[fog]", "data.n_examples=4",
                "data.batch_size=2", "data.loader_workers=0")
    metrics = _record(proc, real)
    assert metrics.model.iloc[0] == "resnet50" and metrics.weights.iloc[0] == "torchvision:resnet50/IMAGENET1K_V1"
    assert metrics.model_parameters.iloc[0] == 25_557_032
    assert metrics.query("metric == 'n_samples' and domain == 'fog'").value.item() == 4


def test_missing_checkpoint_is_a_clear_error(real, tmp_path):
    proc = _run(real, "data=cifar10_c_continual", "data.n_examples=8", model_dir=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Standard.pt" in proc.stderr and "drive.google.com" in proc.stderr
