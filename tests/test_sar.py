"""SAR on a tiny model: trained parameters, SAM two-pass update, EMA recovery, empty selections, reset."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import tta_bench
from conftest import batch_stats_copy
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.norm_layers import sar_parameters
from tta_bench.methods.sam import SAM
from tta_bench.methods.sar import official_lr

SGD = dict(optimizer="sgd", lr=0.1, momentum=0.9)


class NamedNet(nn.Module):
    """Module names of ResNet-50 (layer1..4) and ViT-B (blocks.0..11, norm, fc_norm) in one model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
        self.layer4 = nn.Sequential(nn.BatchNorm2d(4))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(12))
        self.head = nn.Module()
        self.head.norm = nn.Sequential(nn.LayerNorm(4))  # "head.norm.0": excluded by "norm."
        self.fc_norm = nn.LayerNorm(4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer4(self.layer1(self.conv(x))).mean((2, 3))
        for block in self.blocks:
            h = block(h)
        return self.fc(self.fc_norm(self.norm(self.head.norm(h))))


EXPECTED = {"layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias", "fc_norm.weight",
            "fc_norm.bias"} | {f"blocks.{i}.1.{p}" for i in range(9) for p in ("weight", "bias")}


@pytest.mark.parametrize("name", ["sar", "deyo"])
def test_trains_norm_affine_except_layer4_late_blocks_and_final_norm(name):
    model = NamedNet()
    assert {n for n, _ in sar_parameters(model)} == EXPECTED
    method = tta_bench.create_method(name, model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == EXPECTED
    trained = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for n, p in model.named_parameters() if n in EXPECTED}
    assert model.layer1[0].running_mean is None and model.training  # batch statistics, train mode
    out = method(torch.rand(4, 3, 5, 5))
    assert torch.isfinite(out).all()


def test_sam_perturbs_by_the_global_gradient_norm_and_restores():
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
    base = torch.optim.SGD([a, b], lr=0.1)
    sam = SAM(base, rho=0.5)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    sam.first_step()
    torch.testing.assert_close(a.detach(), torch.tensor([1.3, 2.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([3.4]))
    a.grad, b.grad = torch.tensor([1.0, 1.0]), torch.tensor([2.0])  # the gradient at w + e(w)
    sam.second_step()
    torch.testing.assert_close(a.detach(), torch.tensor([0.9, 1.9]))
    torch.testing.assert_close(b.detach(), torch.tensor([2.8]))



def _sar_by_hand(model, batches, scale, rho, lr, momentum):
    """Both passes of SAR with explicit formulas; returns logits, final params and the EMA trace."""
    ref = batch_stats_copy(model)
    w = {n: p.detach().clone() for n, p in ref.named_parameters() if n.startswith("bn.")}
    buf, ema, outputs, emas = None, None, [], []
    for x in batches:
        e0 = scale * math.log(3)
        params = {n: p.clone().requires_grad_() for n, p in w.items()}
        out = functional_call(ref, params, (x,))
        h = softmax_entropy(out)
        sel1 = h < e0
        g1 = torch.autograd.grad(h[sel1].mean(), list(params.values()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in g1))
        perturbed = {n: (p + rho * g / (norm + 1e-12)).detach().requires_grad_() for (n, p), g in zip(w.items(), g1)}
        h2 = softmax_entropy(functional_call(ref, perturbed, (x,)))
        sel2 = sel1 & (h2 < e0)
        if rho > 0:
            assert 0 < int(sel2.sum()) < int(sel1.sum()) < len(x)  # both selections are partial
        loss2 = h2[sel2].mean()
        g2 = torch.autograd.grad(loss2, list(perturbed.values()))
        buf = list(g2) if buf is None else [momentum * b + g for b, g in zip(buf, g2)]
        w = {n: p - lr * b for (n, p), b in zip(w.items(), buf)}
        ema = float(loss2.detach()) if ema is None else 0.9 * ema + (1 - 0.9) * float(loss2.detach())
        outputs.append(out.detach())
        emas.append(ema)
    return outputs, w, emas


def test_two_passes_match_hand_computation(tiny_model):
    with torch.no_grad():
        tiny_model.fc.weight *= 8  # spread the entropies so that both selections are partial
    batches = [torch.rand(16, 3, 6, 6) for _ in range(2)]
    with torch.no_grad():
        # E0 just above the 8th smallest entropy: the ascent of SAM pushes some selected samples over it.
        scale = (float(softmax_entropy(batch_stats_copy(tiny_model)(batches[0])).sort().values[7]) + 1e-3) / math.log(3)
    initial = copy.deepcopy(tiny_model)
    outputs, w, emas = _sar_by_hand(tiny_model, batches, scale=scale, rho=0.05, lr=0.1, momentum=0.9)
    method = tta_bench.create_method("sar", tiny_model, e_margin_scale=scale, rho=0.05, reset_constant=0.0, **SGD)
    for x, expected, ema in zip(batches, outputs, emas):
        torch.testing.assert_close(method(x), expected)  # first-forward logits, before the update
        assert float(method.loss_ema) == pytest.approx(ema, rel=1e-6)
    torch.testing.assert_close(tiny_model.bn.weight.detach(), w["bn.weight"])
    torch.testing.assert_close(tiny_model.bn.bias.detach(), w["bn.bias"])
    # The perturbation matters: a plain SGD step on the first gradient ends elsewhere.
    _, w_plain, _ = _sar_by_hand(initial, batches, scale=scale, rho=0.0, lr=0.1, momentum=0.9)
    assert not torch.allclose(w_plain["bn.weight"], w["bn.weight"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("resets_momentum", [False, True])
def test_recovery_when_the_loss_ema_drops_below_the_constant(tiny_model, resets_momentum):
    x = torch.rand(16, 3, 6, 6)
    kept = tta_bench.create_method("sar", copy.deepcopy(tiny_model), e_margin_scale=1.0, reset_constant=0.0, **SGD)
    kept(x)
    assert bool(kept.has_ema) and int(kept.recoveries) == 0
    constant = float(kept.loss_ema) + 1e-3
    method = tta_bench.create_method("sar", tiny_model, e_margin_scale=1.0, reset_constant=constant,
                                     recovery_resets_momentum=resets_momentum, **SGD)
    initial = copy.deepcopy(method.state_dict())
    method(x)
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])  # parameters recovered
    assert int(method.recoveries) == 1
    buf = method.optimizer.state[tiny_model.bn.weight]["momentum_buffer"]
    # The official recovery reloads the SAM wrapper's state only: SGD's momentum survives it.
    assert bool((buf == 0).all()) == resets_momentum
    # Official: the average survives the recovery, so an unchanged loss recovers again.
    assert bool(method.has_ema) and float(method.loss_ema) == float(kept.loss_ema)
    method(x)
    assert int(method.recoveries) == 2


def test_recovery_clearing_the_ema_as_the_public_harness(tiny_model):
    x = torch.rand(16, 3, 6, 6)
    method = tta_bench.create_method("sar", tiny_model, e_margin_scale=1.0, reset_constant=10.0,
                                     recovery_clears_ema=True, **SGD)
    method(x)
    assert int(method.recoveries) == 1 and not bool(method.has_ema)
    method.hparams = dataclasses.replace(method.hparams, reset_constant=0.0)
    method(x)  # a fresh average: the first loss as is
    assert int(method.recoveries) == 1 and bool(method.has_ema)


def test_empty_selection_gives_no_nan_and_the_momentum_step_still_runs(tiny_model):
    method = tta_bench.create_method("sar", tiny_model, e_margin_scale=1.0, reset_constant=0.0, **SGD)
    method(torch.rand(16, 3, 6, 6))
    ema = float(method.loss_ema)
    buf = method.optimizer.state[tiny_model.bn.weight]["momentum_buffer"].clone()
    before = tiny_model.bn.weight.detach().clone()
    method.hparams = dataclasses.replace(method.hparams, e_margin_scale=0.0)  # E0 = 0: nothing selected
    out = method(torch.rand(16, 3, 6, 6))
    assert torch.isfinite(out).all() and torch.isfinite(tiny_model.bn.weight).all()
    torch.testing.assert_close(tiny_model.bn.weight.detach(), before - 0.1 * 0.9 * buf)  # zero gradient
    assert float(method.loss_ema) == ema  # the NaN loss of an empty selection is not averaged in


def test_reset_restores_weights_optimizer_and_ema(tiny_model):
    method = tta_bench.create_method("sar", tiny_model, e_margin_scale=1.0)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(3):
        method(torch.rand(16, 3, 6, 6))
    assert method.loss_ema is not None and method.optimizer.state
    method.reset()
    torch.testing.assert_close(method.state_dict()["model"], initial["model"])
    assert method.optimizer.state_dict()["state"] == {}
    assert method.loss_ema is None and method.has_ema is None and method.recoveries is None


def test_presets_and_official_lr_rule(tiny_model):
    assert official_lr(2.5e-4, "resnet", 64) == 2.5e-4
    assert official_lr(2.5e-4, "resnet", 16) == pytest.approx(2.5e-4 * 2 * 16 / 64)
    assert official_lr(1e-3, "vit", 32) == pytest.approx(5e-4)
    method = tta_bench.create_method("sar", tiny_model, family="imagenet")
    group = method.optimizer.param_groups[0]
    assert isinstance(method.optimizer, torch.optim.SGD) and (group["momentum"], group["nesterov"]) == (0.9, False)
    method(torch.rand(8, 3, 6, 6))
    assert group["lr"] == pytest.approx(2.5e-4 * 2 * 8 / 64)
    cifar = tta_bench.create_method("sar", copy.deepcopy(tiny_model)).optimizer.param_groups[0]
    assert (cifar["lr"], cifar["momentum"]) == (1e-3, 0.9)
