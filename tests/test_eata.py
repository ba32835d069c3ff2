"""ETA/EATA on a tiny model: selection, weighting, moving average, empty selections, Fisher."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tta_bench
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.preparation import SourceData

SGD = dict(optimizer="sgd", lr=0.1, momentum=0.0)


def _manual_step(ref, x, mask_fn, scale, lr=0.1):
    """One SGD step of the EATA loss on a copy, the selection given by mask_fn(probs, entropy)."""
    params = [p for n, p in ref.named_parameters() if n.startswith("bn.")]
    ref.train()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    out = ref(x)
    h = softmax_entropy(out)
    e0 = scale * math.log(out.shape[1])
    sel = mask_fn(out.softmax(1).detach(), h.detach(), e0)
    loss = (h * torch.exp(e0 - h.detach()) * sel).sum() / sel.sum()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    return out.detach(), sel


def test_eta_first_batch_uses_reliable_samples_and_weights_them(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("eta", tiny_model, e_margin_scale=1.0, **SGD)  # E0 = ln 3: most samples
    x = torch.rand(16, 3, 6, 6)
    out = method(x)
    expected_out, sel = _manual_step(ref, x, lambda p, h, e0: h < e0, scale=1.0)
    torch.testing.assert_close(out, expected_out)
    assert sel.any()
    torch.testing.assert_close(tiny_model.bn.weight, ref.bn.weight)
    torch.testing.assert_close(tiny_model.bn.bias, ref.bn.bias)
    probs = expected_out.softmax(1)
    torch.testing.assert_close(method.mean_probs, probs[sel].mean(0))


def test_redundancy_filter_and_moving_average(tiny_model):
    method = tta_bench.create_method("eta", tiny_model, e_margin_scale=1.0, d_margin=0.999, **SGD)
    method(torch.rand(16, 3, 6, 6))
    m_before = method.mean_probs.clone()
    x = torch.rand(16, 3, 6, 6)
    with torch.no_grad():
        out = method.model(x)
    probs, h = out.softmax(1), softmax_entropy(out)
    cos = F.cosine_similarity(m_before.unsqueeze(0), probs, dim=1)
    sel = (h < math.log(3)) & (cos.abs() < 0.999)
    method(x)
    if sel.any():
        torch.testing.assert_close(method.mean_probs, 0.9 * m_before + 0.1 * probs[sel].mean(0))
    else:
        torch.testing.assert_close(method.mean_probs, m_before)


def test_no_step_and_no_nan_when_nothing_is_selected(tiny_model):
    method = tta_bench.create_method("eta", tiny_model, e_margin_scale=0.0)  # E0 = 0: nothing is reliable
    before = copy.deepcopy(method.state_dict())
    out = method(torch.rand(8, 3, 6, 6))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(method.state_dict()["model"], before["model"])
    assert method.optimizer.state_dict()["state"] == {}  # Adam never stepped
    assert not bool(method.has_mean) and torch.isfinite(method.mean_probs).all()


def test_reset_restores_the_moving_average(tiny_model):
    method = tta_bench.create_method("eta", tiny_model, e_margin_scale=1.0)
    method(torch.rand(8, 3, 6, 6))
    assert method.mean_probs is not None
    method.reset()
    assert method.mean_probs is None and method.has_mean is None


def test_eata_fisher_and_penalty(tiny_model):
    rng = np.random.default_rng(0)
    source = SourceData(rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8), np.zeros(10, dtype=np.int64), "toy")
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("eata", tiny_model, fisher_size=8, fisher_batch_size=4, fisher_alpha=5.0,
                                     e_margin_scale=1.0, **SGD)
    artefacts = method.compute_preparation(source, progress=False)
    # By hand: two batches of 4 (the first 8 images), grad^2 of CE against own argmax, averaged.
    x = torch.from_numpy(source.images[:8]).permute(0, 3, 1, 2).float() / 255
    ref_method = tta_bench.create_method("tent", ref)  # same configuration: train mode, batch-stats BN
    expected = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if p.requires_grad}
    for xb in (x[:4], x[4:]):
        out = ref_method.model(xb)
        grads = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), [ref.bn.weight, ref.bn.bias])
        expected["bn.weight"] += grads[0] ** 2
        expected["bn.bias"] += grads[1] ** 2
    torch.testing.assert_close(artefacts["fisher/bn.weight"], expected["bn.weight"] / 2)
    torch.testing.assert_close(artefacts["fisher/bn.bias"], expected["bn.bias"] / 2)
    torch.testing.assert_close(artefacts["theta0/bn.weight"], tiny_model.bn.weight.detach())
    method.load_preparation(artefacts)
    # The penalty is zero at theta0 and 5 * sum F (theta - theta0)^2 after moving.
    assert float(method.regulariser().detach()) == 0.0
    with torch.no_grad():
        tiny_model.bn.weight += 0.1
    fisher_w = artefacts["fisher/bn.weight"]
    assert float(method.regulariser().detach()) == pytest.approx(float(5.0 * (fisher_w * 0.01).sum()), rel=1e-4)


def test_rdumb_resets_fully_every_n_batches(tiny_model):
    method = tta_bench.create_method("rdumb", tiny_model, e_margin_scale=1.0, reset_every=2)
    initial = copy.deepcopy(method.state_dict())
    method(torch.rand(8, 3, 6, 6))
    assert not torch.equal(tiny_model.bn.weight, initial["model"]["bn.weight"]) and bool(method.has_mean)
    method(torch.rand(8, 3, 6, 6))  # the second batch adapts, then everything is reset
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])
    assert method.mean_probs is None and method.optimizer.state_dict()["state"] == {}
    assert method.batches_seen == 0
