"""Method registry and the behaviour of source, norm and tent on a tiny model."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tta_bench
from conftest import assert_adapts_alike
from tta_bench.errors import ConfigError
from tta_bench.methods import method_class
from tta_bench.methods.preparation import SourceData, prepare_method

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"


def test_configs_match_registry():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == tta_bench.list_methods()


@pytest.mark.parametrize("name", tta_bench.list_methods())
def test_config_fields_match_hparams(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg["name"] == name
    fields = {f.name for f in dataclasses.fields(method_class(name).Hparams)}
    assert set(cfg) - {"name"} == fields


def _prepared(name: str, model: torch.nn.Module, cache: Path, family: str = "cifar") -> tta_bench.Method:
    """The method around `model`, with the runner's preparation step on a toy source set (every class)."""
    method = tta_bench.create_method(name, model, family=family)
    if method.needs_source:
        rng = np.random.default_rng(0)
        toy = SourceData(rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8), np.arange(12) % 3, "toy/train")
        prepare_method(method, toy, cache, weights_hash="toy", progress=False)
    return method


@pytest.mark.parametrize("name", tta_bench.list_methods())
@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_every_method_runs_and_resets(name, family, tiny_model, tmp_path):
    method = _prepared(name, tiny_model, tmp_path, family)
    before = copy.deepcopy(method.state_dict())
    x = torch.rand(8, 3, 6, 6)
    out = method(x)
    assert out.shape == (8, 3) and torch.isfinite(out).all()
    method(torch.rand(8, 3, 6, 6))
    method.reset()
    after = method.state_dict()
    assert after.keys() == before.keys()
    for key in before:  # model, optimizer and every piece of method state (teachers, EMAs, memories)
        torch.testing.assert_close(after[key], before[key], equal_nan=True, msg=f"{name}: {key} not restored")


def _adapted(name: str, model: torch.nn.Module, cache: Path, batches: int = 3) -> tta_bench.Method:
    """The prepared method (random init from seed 0) after adapting on `batches` random batches."""
    torch.manual_seed(0)
    method = _prepared(name, model, cache)
    for _ in range(batches):
        method(torch.rand(8, 3, 6, 6))
    return method


@pytest.mark.parametrize("name", tta_bench.list_methods())
def test_after_reset_a_method_adapts_like_a_fresh_one(name, tiny_model, tmp_path):
    original = copy.deepcopy(tiny_model)
    method = _adapted(name, tiny_model, tmp_path)
    method.reset()
    torch.manual_seed(0)
    fresh = _prepared(name, original, tmp_path)  # the same cached preparation, the same random init
    assert_adapts_alike(method, fresh)


def test_unknown_method_and_hparam_are_clear_errors(tiny_model):
    with pytest.raises(ConfigError, match="valid: " + ", ".join(tta_bench.list_methods())):
        tta_bench.create_method("nonexistent", tiny_model)
    with pytest.raises(ConfigError, match="no hyperparameter"):
        tta_bench.create_method("tent", tiny_model, learning_rate=1.0)


def test_source_is_the_eval_model(tiny_model):
    x = torch.rand(5, 3, 6, 6)
    expected = copy.deepcopy(tiny_model).eval()(x)
    torch.testing.assert_close(tta_bench.create_method("source", tiny_model)(x), expected)


def test_norm_uses_batch_statistics(tiny_model):
    x = torch.rand(6, 3, 6, 6) * 3 + 1  # far from the source statistics
    ref = copy.deepcopy(tiny_model)
    h = ref.conv(x)
    mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    normed = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + ref.bn.eps)
    normed = normed * ref.bn.weight[None, :, None, None] + ref.bn.bias[None, :, None, None]
    expected = ref.fc(torch.relu(normed).mean((2, 3)))
    method = tta_bench.create_method("norm", tiny_model)
    torch.testing.assert_close(method(x), expected)
    # Predictions depend on the other samples of the batch, and nothing is trained.
    assert not torch.allclose(method(x[:3])[0], method(x)[0])
    assert method.optimizer is None


def test_tent_update_equals_hand_computed(tiny_model):
    x = torch.rand(8, 3, 6, 6)
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("tent", tiny_model, lr=0.01)  # Adam, betas (0.9, 0.999)
    out = method(x)
    # Hand computation: batch-stats BN forward, entropy gradient w.r.t. BN affine, one Adam step.
    gamma, beta = ref.bn.weight.detach().clone().requires_grad_(), ref.bn.bias.detach().clone().requires_grad_()
    h = ref.conv(x).detach()
    mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (h - mu) / torch.sqrt(var + 1e-5) * gamma[None, :, None, None] + beta[None, :, None, None]
    logits = ref.fc(torch.relu(z).mean((2, 3)))
    p = logits.softmax(1)
    loss = -(p * logits.log_softmax(1)).sum(1).mean()
    g_gamma, g_beta = torch.autograd.grad(loss, (gamma, beta))
    torch.testing.assert_close(out, logits.detach())  # predictions come before the update
    for param, grad in ((gamma, g_gamma), (beta, g_beta)):
        # Adam's first step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected -> lr * g / (|g| + eps)
        step = 0.01 * grad / (grad.abs() + 1e-8)
        expected = param.detach() - step
        actual = tiny_model.bn.weight if param is gamma else tiny_model.bn.bias
        torch.testing.assert_close(actual.detach(), expected, rtol=1e-5, atol=1e-6)
    # Only BN affine parameters changed.
    torch.testing.assert_close(tiny_model.conv.weight, ref.conv.weight)
    torch.testing.assert_close(tiny_model.fc.weight, ref.fc.weight)


def test_tent_imagenet_preset_is_sgd_nesterov(tiny_model):
    method = tta_bench.create_method("tent", tiny_model, family="imagenet")
    group = method.optimizer.param_groups[0]
    assert isinstance(method.optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"]) == (2.5e-4, 0.9, True)


def test_tent_reset_restores_weights_and_optimizer(tiny_model):
    original = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("tent", tiny_model)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(3):
        method(torch.rand(8, 3, 6, 6))
    assert not torch.allclose(tiny_model.bn.weight, initial["model"]["bn.weight"])
    method.reset()
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])
    assert method.optimizer.state_dict()["state"] == {}
    # After reset the method adapts exactly like a fresh one.
    fresh = tta_bench.create_method("tent", original)
    for _ in range(2):
        x = torch.rand(8, 3, 6, 6)
        torch.testing.assert_close(method(x), fresh(x))
