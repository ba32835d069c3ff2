"""BN-alpha against hand computations, and the method-level batch size through the runner."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from test_end_to_end import FEW, run

import tta_bench
from tta_bench.errors import ConfigError
from tta_bench.methods.base import effective_batch_size
from tta_bench.methods.bn_alpha import AlphaBatchNorm2d


def hand_forward(ref: torch.nn.Module, x: torch.Tensor, source_weight: float, batch_weight: float) -> torch.Tensor:
    """TinyNet forward with mixed statistics: unbiased variance over batch and spatial positions."""
    h = ref.conv(x)
    n = h.shape[0] * h.shape[2] * h.shape[3]
    mean_b = h.sum((0, 2, 3)) / n
    var_b = ((h - mean_b[None, :, None, None]) ** 2).sum((0, 2, 3)) / (n - 1)
    mean = source_weight * ref.bn.running_mean + batch_weight * mean_b
    var = source_weight * ref.bn.running_var + batch_weight * var_b
    z = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + ref.bn.eps)
    z = z * ref.bn.weight[None, :, None, None] + ref.bn.bias[None, :, None, None]
    return ref.fc(torch.relu(z).mean((2, 3)))


@pytest.mark.parametrize("side, weights", [("batch", (0.9, 0.1)), ("source", (0.1, 0.9))])
def test_statistics_equal_hand_computation(tiny_model, side, weights):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("bn_alpha", tiny_model, alpha_weights=side)
    x = torch.rand(1, 3, 6, 6) * 2 + 0.5  # one image, away from the source statistics
    torch.testing.assert_close(method(x), hand_forward(ref, x, *weights))
    x2 = torch.rand(3, 3, 6, 6)
    torch.testing.assert_close(method(x2), hand_forward(ref, x2, *weights))


def test_nothing_is_trained_or_accumulated(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("bn_alpha", tiny_model, family="imagenet")
    assert isinstance(tiny_model.bn, AlphaBatchNorm2d) and method.optimizer is None
    assert not any(p.requires_grad for p in tiny_model.parameters()) and not tiny_model.training
    first = method(torch.ones(1, 3, 6, 6))
    for _ in range(3):
        method(torch.rand(1, 3, 6, 6) * 5)
    torch.testing.assert_close(method(torch.ones(1, 3, 6, 6)), first)  # no state carried over
    assert tiny_model.state_dict().keys() == ref.state_dict().keys()
    torch.testing.assert_close(tiny_model.state_dict(), ref.state_dict())
    method.reset()
    torch.testing.assert_close(method(torch.ones(1, 3, 6, 6)), first)


def test_alpha_is_validated(tiny_model):
    with pytest.raises(ConfigError, match="alpha_weights"):
        tta_bench.create_method("bn_alpha", copy.deepcopy(tiny_model), alpha_weights="target")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        tta_bench.create_method("bn_alpha", tiny_model, alpha=1.5)


def test_effective_batch_size():
    hp = tta_bench.methods.method_class("bn_alpha").make_hparams("cifar")
    assert hp.batch_size == 1 and effective_batch_size(hp, 200) == 1
    assert effective_batch_size(tta_bench.methods.method_class("bn_alpha").make_hparams("imagenet", batch_size=None), 64) == 64
    assert effective_batch_size(tta_bench.methods.method_class("tent").make_hparams("cifar"), 200) == 200


def test_runner_uses_the_method_batch_size(embedded, tmp_path):
    run_dir = run(embedded, tmp_path, "method=bn_alpha", "data.batch_size=200", "data.n_examples=20", FEW,
                  "forgetting=false")
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert (metrics.batch_size == 1).all()
    curve = pd.read_parquet(run_dir / "curve.parquet")
    assert len(curve) == 60 and (curve.n_seen.diff().dropna() == 1).all()
    cost = pd.read_parquet(run_dir / "cost.parquet")
    assert (cost.batch_size == 1).all()
