"""DeYO on a tiny model: patch shuffle, PLPD, both selections and weights, empty selections, reset."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import tta_bench
from conftest import batch_stats_copy
from tta_bench.methods import method_class
from tta_bench.methods.deyo import occlude, patch_shuffle, pixel_shuffle
from tta_bench.methods.losses import softmax_entropy


def _patches(x: torch.Tensor, k: int) -> list[list[torch.Tensor]]:
    """Per image, the k*k patches in row-major grid order."""
    n = x.shape[-1] // k
    return [[img[:, r * n:(r + 1) * n, c * n:(c + 1) * n] for r in range(k) for c in range(k)] for img in x]


def _shuffle_by_hand(x: torch.Tensor, perm: torch.Tensor, k: int) -> torch.Tensor:
    """Output grid position j of image i holds input patch perm[i, j]."""
    n, out = x.shape[-1] // k, torch.empty_like(x)
    for i, patches in enumerate(_patches(x, k)):
        for j, src in enumerate(perm[i].tolist()):
            out[i, :, (j // k) * n:(j // k + 1) * n, (j % k) * n:(j % k + 1) * n] = patches[src]
    return out


def test_patch_shuffle_permutes_the_patches_of_each_image():
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(3)
    out = patch_shuffle(x, 4)
    torch.manual_seed(3)
    perm = torch.argsort(torch.rand(6, 16), dim=-1)
    torch.testing.assert_close(out, _shuffle_by_hand(x, perm, 4), rtol=0, atol=0)
    for before, after in zip(_patches(x, 4), _patches(out, 4)):  # a bijection of patches per image
        matches = [[torch.equal(a, b) for b in before] for a in after]
        assert sorted(row.index(True) for row in matches) == list(range(16))
    assert len({tuple(p.tolist()) for p in perm}) == 6  # each image has its own permutation


def test_patch_shuffle_of_a_size_not_divisible_by_the_grid_keeps_the_shape():
    out = patch_shuffle(torch.rand(2, 3, 30, 30), 4)  # resized to 28 and back, as the official code
    assert out.shape == (2, 3, 30, 30)


def test_pixel_shuffle_and_occlusion():
    x = torch.rand(2, 3, 8, 8)
    torch.manual_seed(0)
    out = pixel_shuffle(x)
    torch.manual_seed(0)
    perm = torch.randperm(64)
    torch.testing.assert_close(out, x.reshape(2, 3, 64)[:, :, perm].reshape(2, 3, 8, 8))
    occ = occlude(x, 4, 2, 1)
    torch.testing.assert_close(occ[:, :, 2:6, 1:5], x.mean((2, 3), keepdim=True).expand(2, 3, 4, 4))
    torch.testing.assert_close(occ[:, :, :2], x[:, :, :2])



def _deyo_by_hand(model, x, margin, tau, e0, lr, seed):
    """DeYO's step with explicit formulas: (logits, new BN weight, new BN bias, S1 size, S2 size)."""
    ref = batch_stats_copy(model)
    out = ref(x)
    h = softmax_entropy(out)
    s1 = torch.where(h < margin)[0]
    torch.manual_seed(seed)
    perm = torch.argsort(torch.rand(len(s1), 16), dim=-1)
    with torch.no_grad():
        p, p_prime = out[s1].softmax(1), ref(_shuffle_by_hand(x[s1], perm, 4)).softmax(1)
    c = p.argmax(1)
    plpd = p[torch.arange(len(s1)), c] - p_prime[torch.arange(len(s1)), c]
    s2 = plpd > tau
    weights = torch.exp(-(h[s1][s2].detach() - e0)) + torch.exp(plpd[s2])
    loss = (weights * h[s1][s2]).mean()
    gw, gb = torch.autograd.grad(loss, [ref.bn.weight, ref.bn.bias])
    return out.detach(), ref.bn.weight - lr * gw, ref.bn.bias - lr * gb, len(s1), int(s2.sum())


def test_selection_plpd_and_weights_match_hand_computation(tiny_model):
    with torch.no_grad():
        tiny_model.fc.weight *= 8  # spread entropies and PLPDs
    x = torch.rand(16, 3, 8, 8)
    with torch.no_grad():
        h = softmax_entropy(batch_stats_copy(tiny_model)(x)).sort().values
    margin = float(h[10])  # 10 samples pass the entropy filter
    # tau at the median PLPD of those samples: found with a first pass, then reused with the same seed.
    ref = batch_stats_copy(tiny_model)
    out = ref(x)
    s1 = torch.where(softmax_entropy(out) < margin)[0]
    torch.manual_seed(5)
    perm = torch.argsort(torch.rand(len(s1), 16), dim=-1)
    with torch.no_grad():
        p, p_prime = out[s1].softmax(1), ref(_shuffle_by_hand(x[s1], perm, 4)).softmax(1)
        c = p.argmax(1, keepdim=True)
        tau = float((p.gather(1, c) - p_prime.gather(1, c)).median())
    e0 = 0.4 * math.log(3)
    expected = _deyo_by_hand(tiny_model, x, margin, tau, e0, lr=0.1, seed=5)
    assert expected[3] == 10 and 0 < expected[4] < 10
    method = tta_bench.create_method("deyo", tiny_model, optimizer="sgd", lr=0.1, momentum=0.0,
                                     deyo_margin_scale=margin / math.log(3), plpd_threshold=tau)
    torch.manual_seed(5)
    torch.testing.assert_close(method(x), expected[0])
    torch.testing.assert_close(tiny_model.bn.weight.detach(), expected[1].detach())
    torch.testing.assert_close(tiny_model.bn.bias.detach(), expected[2].detach())


def test_loss_selects_and_weights(tiny_model):
    method = tta_bench.create_method("deyo", tiny_model, plpd_threshold=0.2)
    entropy, plpd = torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.3, 0.1, 0.25])
    loss, selected = method.loss(entropy, plpd, num_classes=10)
    e0 = 0.4 * math.log(10)
    w = torch.exp(e0 - entropy) + torch.exp(plpd)
    assert selected.tolist() == [True, False, True]
    assert float(loss) == pytest.approx(float((w * entropy)[[0, 2]].mean()), rel=1e-6)
    unweighted = tta_bench.create_method("deyo", copy.deepcopy(tiny_model), reweight_ent=False, reweight_plpd=False, filter_plpd=False)
    loss, selected = unweighted.loss(entropy, plpd, num_classes=10)
    assert selected.all() and float(loss) == pytest.approx(0.3)


@pytest.mark.parametrize("overrides", [dict(deyo_margin_scale=0.0), dict(deyo_margin_scale=1.0, plpd_threshold=2.0)])
def test_no_step_and_no_nan_when_a_selection_is_empty(tiny_model, overrides):
    method = tta_bench.create_method("deyo", tiny_model, **overrides)  # Adam: any step would move it
    before = copy.deepcopy(method.state_dict())
    out = method(torch.rand(8, 3, 8, 8))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(method.state_dict()["model"], before["model"])
    assert method.optimizer.state_dict()["state"] == {}


def test_reset_and_presets(tiny_model):
    method = tta_bench.create_method("deyo", tiny_model, deyo_margin_scale=1.0, plpd_threshold=-1.0)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(2):
        method(torch.rand(8, 3, 8, 8))
    assert method.optimizer.state_dict()["state"]
    method.reset()
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])
    assert method.optimizer.state_dict()["state"] == {}
    cifar = method_class("deyo").make_hparams("cifar")
    assert (cifar.optimizer, cifar.lr, cifar.plpd_threshold, cifar.lr_rule) == ("adam", 1e-3, 0.2, "fixed")
    imagenet = method_class("deyo").make_hparams("imagenet")
    assert (imagenet.optimizer, imagenet.lr, imagenet.momentum, imagenet.nesterov, imagenet.plpd_threshold) == \
        ("sgd", 2.5e-4, 0.9, False, 0.3)
