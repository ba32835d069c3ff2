"""Shared fixtures: a tiny BN model, and the embedded benchmark generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """Conv-BN-ReLU-pool-linear: small enough for hand-computed updates."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def batch_stats_copy(model: nn.Module) -> nn.Module:
    """A copy in train mode whose BatchNorm layers use batch statistics only (reference computations)."""
    import copy

    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return model


def assert_adapts_alike(method, fresh, batches: int = 3, batch_size: int = 8) -> None:
    """`method` and `fresh` give the same outputs on the same batches under the same random streams."""
    for seed in range(batches):
        x = torch.rand(batch_size, 3, 6, 6)
        torch.manual_seed(seed)
        out = method(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(out, fresh(x), msg=f"{method.name}: differs from a fresh method")


@pytest.fixture
def tiny_model() -> TinyNet:
    """A TinyNet with non-trivial BN running statistics."""
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 6, 6))
    return model.eval()


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data_root and model_dir holding the generated digits_c benchmark and its trained model.

    TTA_TEST_CACHE=<dir> reuses a folder across sessions (local development only).
    """
    from tta_bench.models import create_model

    base = Path(os.environ["TTA_TEST_CACHE"]) if "TTA_TEST_CACHE" in os.environ else tmp_path_factory.mktemp("embedded")
    paths = {"data_root": base / "data", "model_dir": base / "models"}
    create_model("digits_c", paths["model_dir"], paths["data_root"], progress=False)
    return paths
