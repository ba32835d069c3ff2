"""Shared method building blocks: CoTTA augmentation, EMA teacher, stochastic restore, losses, features."""

from __future__ import annotations

import copy

import pytest
import torch

from tta_bench.methods.augment import COTTA, ROID, CoTTAAugment, color_jitter
from tta_bench.methods.losses import soft_cross_entropy, symmetric_cross_entropy
from tta_bench.methods.teacher import ema_update, make_teacher, restorable_parameters, stochastic_restore
from tta_bench.models.split import classifier_of, features_and_logits


@pytest.mark.parametrize("spec", [COTTA, ROID])
def test_augmentation_keeps_shape_and_range(spec):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    y = CoTTAAugment(spec)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert not torch.allclose(y, x)


def test_augmentation_draws_one_transform_per_call():
    """Without noise, identical images in one batch come out identical (one draw for the batch)."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16).repeat(3, 1, 1, 1)
    y = CoTTAAugment(ROID)(x)
    torch.testing.assert_close(y[0], y[1])
    torch.testing.assert_close(y[0], y[2])


def test_augmentation_is_reproducible_under_a_seed():
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(3)
    a = CoTTAAugment()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(CoTTAAugment()(x), a)


def test_color_jitter_gamma_has_finite_gradients():
    x = torch.zeros(2, 3, 8, 8, requires_grad=True)
    torch.manual_seed(0)
    color_jitter(x, COTTA).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_ema_update_averages_parameters(tiny_model):
    teacher = make_teacher(tiny_model)
    assert not any(p.requires_grad for p in teacher.parameters())
    expected = {n: 0.9 * p.detach().clone() for n, p in teacher.named_parameters()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(1.0)
    for n, p in tiny_model.named_parameters():
        expected[n] += 0.1 * p.detach()
    ema_update(teacher, tiny_model, 0.9)
    for n, p in teacher.named_parameters():
        torch.testing.assert_close(p, expected[n])


def test_stochastic_restore_probability_zero_one_and_share(tiny_model):
    tiny_model.requires_grad_(True)
    source = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(1.0)
    moved = copy.deepcopy(tiny_model.state_dict())
    stochastic_restore(tiny_model, source, 0.0)
    torch.testing.assert_close(tiny_model.state_dict(), moved)
    stochastic_restore(tiny_model, source, 1.0)
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p, source[n])
    big = torch.nn.Linear(100, 100)
    src = {n: torch.zeros_like(p) for n, p in big.named_parameters()}
    torch.manual_seed(0)
    stochastic_restore(big, src, 0.3)
    share = (big.weight == 0).float().mean().item()
    assert 0.27 < share < 0.33


def test_restorable_parameters_skip_frozen(tiny_model):
    tiny_model.requires_grad_(False)
    tiny_model.bn.weight.requires_grad_(True)
    assert [n for n, _ in restorable_parameters(tiny_model)] == ["bn.weight"]


def test_soft_and_symmetric_cross_entropy():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    expected = -(b.softmax(1) * a.log_softmax(1)).sum(1)
    torch.testing.assert_close(soft_cross_entropy(a, b), expected)
    sym = symmetric_cross_entropy(a, b)
    torch.testing.assert_close(sym, 0.5 * expected + 0.5 * soft_cross_entropy(b, a))


def test_features_and_logits_match_the_model(tiny_model):
    x = torch.rand(4, 3, 6, 6)
    feats, logits = features_and_logits(tiny_model, x)
    torch.testing.assert_close(logits, tiny_model(x))
    torch.testing.assert_close(tiny_model.fc(feats), logits)
    assert classifier_of(tiny_model) is tiny_model.fc
    assert not tiny_model.fc._forward_pre_hooks  # the capture hook is removed again
