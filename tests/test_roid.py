"""ROID on a tiny model: set-up, hand-computed steps, consistency subset, reset, degenerate batches."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import tta_bench
from conftest import assert_adapts_alike
from tta_bench.methods.augment import ROID as ROID_AUGMENT

SGD = dict(optimizer="sgd", lr=0.1, momentum=0.0)


def _logits(model, gamma, beta, x):
    """TinyNet forward with batch-statistics BN and the given affine parameters."""
    h = model.conv(x).detach()
    mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (h - mu) / torch.sqrt(var + 1e-5) * gamma[None, :, None, None] + beta[None, :, None, None]
    return model.fc(torch.relu(z).mean((2, 3)))


def _weights(logits, ema, temperature=1 / 3):
    """The official weights, written out: min-max diversity and certainty, exp(./T), zero below the mean."""
    p = logits.softmax(1)
    cos = (p @ ema) / (p.norm(dim=1) * ema.norm())
    div = 1 - cos
    div = (div - div.min()) / (div.max() - div.min())
    mask = div < div.mean()
    cert = (p * logits.log_softmax(1)).sum(1)  # negative entropy
    cert = (cert - cert.min()) / (cert.max() - cert.min())
    w = torch.exp(div * cert / temperature)
    w[mask] = 0.0
    return w, mask


def _slr(logits):
    p = logits.softmax(1).clamp(max=0.99)
    return -(p * torch.log(p / (1 - p) + 1e-5)).sum(1)


def _prior_corrected(logits):
    b, c = logits.shape
    prior = logits.softmax(1).mean(0)
    s = max(1 / b, 1 / c) / prior.max()
    return logits * (prior + s) / (1 + s * c)


def _hand_step(model, params, source, ema, x, lr=0.1, m_src=0.99):
    """One ROID step without consistency, SGD without momentum: (output, new params, new ema)."""
    gamma, beta = (p.detach().clone().requires_grad_() for p in params)
    logits = _logits(model, gamma, beta, x)
    w, mask = _weights(logits.detach(), ema)
    loss = (_slr(logits) * w)[~mask].sum() / len(x)
    grads = torch.autograd.grad(loss, (gamma, beta))
    new = [m_src * (p.detach() - lr * g) + (1 - m_src) * s for p, g, s in zip((gamma, beta), grads, source)]
    new_ema = 0.9 * ema + 0.1 * logits.detach().softmax(1).mean(0)
    return _prior_corrected(logits.detach()), new, new_ema, mask


def test_setup_trains_norm_affine_with_batch_statistics_in_eval_mode(tiny_model):
    method = tta_bench.create_method("roid", tiny_model)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {"bn.weight", "bn.bias"}
    assert [id(p) for p in method.optimizer.param_groups[0]["params"]] == [id(tiny_model.bn.weight), id(tiny_model.bn.bias)]
    assert not tiny_model.training and tiny_model.bn.running_mean is None
    assert isinstance(method.optimizer, torch.optim.Adam) and method.optimizer.param_groups[0]["lr"] == 1e-3
    assert method.augment.spec == ROID_AUGMENT
    assert (ROID_AUGMENT.padding_mode, ROID_AUGMENT.blur, ROID_AUGMENT.noise_std) == ("reflect", False, 0.0)
    hp = method.hparams
    assert (hp.momentum_src, hp.momentum_probs, hp.temperature) == (0.99, 0.9, 1 / 3)
    assert hp.use_weighting and hp.use_prior_correction and hp.use_consistency


def test_imagenet_preset_is_sgd_nesterov(tiny_model):
    group = tta_bench.create_method("roid", tiny_model, family="imagenet").optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"]) == \
        (2.5e-4, 0.9, 0.0, True, 0.0)


def test_two_steps_equal_hand_computation(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("roid", tiny_model, use_consistency=False, **SGD)
    source = [ref.bn.weight.detach().clone(), ref.bn.bias.detach().clone()]
    params, ema = source, torch.full((3,), 1 / 3)
    for _ in range(2):  # the second step sees a non-uniform EMA and parameters away from the source
        x = torch.rand(16, 3, 6, 6)
        out = method(x)
        expected, params, ema, mask = _hand_step(ref, params, source, ema, x)
        assert mask.any() and not mask.all()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(tiny_model.bn.weight.detach(), params[0])
        torch.testing.assert_close(tiny_model.bn.bias.detach(), params[1])
        torch.testing.assert_close(method.class_probs, ema)
    torch.testing.assert_close(tiny_model.conv.weight, ref.conv.weight)
    torch.testing.assert_close(tiny_model.fc.weight, ref.fc.weight)


def test_weight_ensembling_pulls_towards_the_source(tiny_model):
    method = tta_bench.create_method("roid", tiny_model, use_consistency=False, momentum_src=0.5, lr=0.0,
                                     optimizer="sgd", momentum=0.0)
    source = tiny_model.bn.weight.detach().clone()
    with torch.no_grad():
        tiny_model.bn.weight += 1.0
    method(torch.rand(8, 3, 6, 6))  # lr 0: only the ensembling moves the weights
    torch.testing.assert_close(tiny_model.bn.weight.detach(), source + 0.5)


def test_consistency_uses_the_kept_samples_only(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("roid", tiny_model, **SGD)
    seen = []
    method.augment = lambda batch: seen.append(batch) or batch  # identity: the term is then deterministic
    x = torch.rand(16, 3, 6, 6)
    method(x)
    gamma, beta = (p.detach().clone().requires_grad_() for p in (ref.bn.weight, ref.bn.bias))
    logits = _logits(ref, gamma, beta, x)
    w, mask = _weights(logits.detach(), torch.full((3,), 1 / 3))
    torch.testing.assert_close(seen[0], x[~mask])
    aug = _logits(ref, gamma, beta, x[~mask])  # batch statistics of the kept samples
    kept = logits[~mask]
    sce = -0.5 * (kept.softmax(1) * aug.log_softmax(1)).sum(1) - 0.5 * (aug.softmax(1) * kept.log_softmax(1)).sum(1)
    loss = (_slr(logits) * w)[~mask].sum() / 16 + (sce * w[~mask]).sum() / 16
    grads = torch.autograd.grad(loss, (gamma, beta))
    for actual, p, g in zip((tiny_model.bn.weight, tiny_model.bn.bias), (gamma, beta), grads):
        torch.testing.assert_close(actual.detach(), 0.99 * (p.detach() - 0.1 * g) + 0.01 * p.detach())


def test_prior_correction_off_returns_the_logits(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("roid", tiny_model, use_prior_correction=False, use_consistency=False)
    x = torch.rand(8, 3, 6, 6)
    torch.testing.assert_close(method(x), _logits(ref, ref.bn.weight, ref.bn.bias, x).detach())


def test_loss_is_divided_by_the_largest_batch_seen(tiny_model):
    method = tta_bench.create_method("roid", tiny_model, use_consistency=False)
    method(torch.rand(16, 3, 6, 6))
    method(torch.rand(5, 3, 6, 6))  # a last, partial batch: the official code divides by cfg batch size
    assert method.loss_batch_size == 16


def test_reset_restores_model_optimizer_ema_and_source(tiny_model):
    original = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("roid", tiny_model)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(3):
        method(torch.rand(8, 3, 6, 6))
    method.source[0].add_(1.0)
    assert method.class_probs is not None and method.optimizer.state_dict()["state"]
    method.reset()
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])
    torch.testing.assert_close(method.source, initial["source"])
    assert method.class_probs is None and method.optimizer.state_dict()["state"] == {}
    assert_adapts_alike(method, tta_bench.create_method("roid", original), batches=2)


def test_no_nan_when_all_weights_are_zero(tiny_model):
    method = tta_bench.create_method("roid", tiny_model)
    before = [p.detach().clone() for p in method.params]
    method.sample_weights = lambda logits: (torch.zeros(len(logits)), torch.zeros(len(logits), dtype=torch.bool))
    out = method(torch.rand(8, 3, 6, 6))
    assert torch.isfinite(out).all()
    for p, b in zip(method.params, before):  # zero gradient (Adam step 0), ensembling with an equal source
        torch.testing.assert_close(p.detach(), b)


def test_no_nan_on_identical_samples(tiny_model):
    # Identical samples: zero range in both min-max scalings (the official code produces NaN here).
    method = tta_bench.create_method("roid", tiny_model)
    x = torch.rand(1, 3, 6, 6).expand(8, -1, -1, -1).contiguous()
    for _ in range(2):
        assert torch.isfinite(method(x)).all()
    assert all(torch.isfinite(p).all() for p in method.params) and torch.isfinite(method.class_probs).all()
    weights, keep = method.sample_weights(method.model(x))
    torch.testing.assert_close(weights, torch.ones(8))
    assert keep.all()


def test_cosine_helper_matches_torch():
    p, ema = torch.rand(5, 3).softmax(1), torch.rand(3)
    torch.testing.assert_close((p @ ema) / (p.norm(dim=1) * ema.norm()), F.cosine_similarity(ema[None], p, dim=1))
