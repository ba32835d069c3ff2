"""RoTTA on a tiny model: CSTU memory, robust BN, update schedule, hand-computed update, reset."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

import tta_bench
from conftest import assert_adapts_alike
from tta_bench.methods import method_class
from tta_bench.methods.rotta import CategoryBalancedMemory, RobustBN


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _state(memory: CategoryBalancedMemory) -> list[list[tuple[int, float, int]]]:
    return [[(i.slot, i.uncertainty, i.age) for i in c] for c in memory.items]


def test_memory_quota_eviction_and_ages_hand_worked():
    # capacity 4, 3 classes: quota 4/3, so a class may hold 2 items (1 < 4/3 still admits one more).
    mem = CategoryBalancedMemory(capacity=4, num_classes=3)
    ln3 = math.log(3)
    assert mem.add(0, 0, 0.5) and mem.add(1, 0, 0.4)  # A (slot 0), B (slot 1); ages A 2, B 1
    assert _state(mem) == [[(0, 0.5, 2), (1, 0.4, 1)], [], []]
    # Class 0 is at its quota: evict its highest score if above the new one.
    # A: sig(2/4) + 0.5/ln3 = 1.078, B: sig(1/4) + 0.4/ln3 = 0.926, new: 0.5 + 0.1/ln3 = 0.591.
    assert _sigmoid(2 / 4) + 0.5 / ln3 > _sigmoid(1 / 4) + 0.4 / ln3 > 0.5 + 0.1 / ln3
    assert mem.add(2, 0, 0.1)  # C replaces A in slot 0
    assert _state(mem) == [[(1, 0.4, 2), (0, 0.1, 1)], [], []]
    assert mem.add(3, 1, 0.2) and mem.add(4, 2, 0.3)  # D (slot 2), E (slot 3): memory full
    assert _state(mem) == [[(1, 0.4, 4), (0, 0.1, 3)], [(2, 0.2, 2)], [(3, 0.3, 1)]]
    # Class 1 is under quota but the memory is full: evict from the majority class (0).
    # B: sig(4/4) + 0.4/ln3 = 1.095 > C: sig(3/4) + 0.1/ln3 = 0.770 > new 0.5 + 0.05/ln3 = 0.546.
    assert mem.add(5, 1, 0.05)  # F takes B's slot 1
    assert _state(mem) == [[(0, 0.1, 4)], [(2, 0.2, 3), (1, 0.05, 1)], [(3, 0.3, 2)]]
    # A very uncertain sample scores above every item of the majority class (1): rejected, but
    # everything still ages. D: sig(3/4) + 0.2/ln3 = 0.861, new: 0.5 + 2/ln3 = 2.32.
    assert not mem.add(6, 2, 2.0)
    assert _state(mem) == [[(0, 0.1, 5)], [(2, 0.2, 4), (1, 0.05, 2)], [(3, 0.3, 3)]]
    assert mem.contents() == ([0, 2, 1, 3], [5, 4, 2, 3])  # class by class, insertion order
    # Only the surviving samples are copied, each into its slot.
    batch = torch.arange(7.0).view(7, 1, 1, 1).expand(7, 1, 2, 2)
    mem.flush(batch)
    assert mem.images[:, 0, 0, 0].tolist() == [2.0, 5.0, 3.0, 4.0]
    assert mem.pending == {}


def test_robust_bn_statistics_hand_computed(tiny_model):
    bn = tiny_model.bn
    src_mean, src_var = bn.running_mean.clone(), bn.running_var.clone()
    rbn = RobustBN(bn, alpha=0.05).train()
    h = torch.randn(5, 4, 3, 3) * 2 + 1
    out = rbn(h)
    mean = 0.95 * src_mean + 0.05 * h.mean((0, 2, 3))
    var = 0.95 * src_var + 0.05 * h.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(rbn.running_mean, mean)
    torch.testing.assert_close(rbn.running_var, var)
    c = (None, slice(None), None, None)
    expected = (h - mean[c]) / torch.sqrt(var[c] + bn.eps) * bn.weight[c] + bn.bias[c]
    torch.testing.assert_close(out, expected)
    # Gradients flow through the batch statistics.
    h.requires_grad_(True)
    rbn(h).pow(2).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    # Eval mode normalises with the stored statistics and changes nothing.
    rbn.eval()
    stored = rbn.running_mean.clone(), rbn.running_var.clone()
    h2 = torch.randn(2, 4, 3, 3)
    expected = (h2 - stored[0][c]) / torch.sqrt(stored[1][c] + bn.eps) * bn.weight[c] + bn.bias[c]
    torch.testing.assert_close(rbn(h2), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rbn.running_mean, stored[0])


def test_setup_trains_exactly_robust_bn_affine(tiny_model):
    method = tta_bench.create_method("rotta", tiny_model)
    assert isinstance(method.model.bn, RobustBN) and isinstance(method.teacher.bn, RobustBN)
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert trainable == {"bn.weight", "bn.bias"}
    assert {id(p) for g in method.optimizer.param_groups for p in g["params"]} == {
        id(method.model.bn.weight), id(method.model.bn.bias)}
    assert not any(p.requires_grad for p in method.teacher.parameters())
    group = method.optimizer.param_groups[0]
    assert isinstance(method.optimizer, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 0.0)
    hp = method.hparams
    assert (hp.memory_size, hp.update_frequency, hp.nu, hp.alpha, hp.lambda_t, hp.lambda_u) == (64, 64, 0.001, 0.05, 1.0, 1.0)
    assert method_class("rotta").make_hparams("imagenet") == hp


def test_setup_trains_layer_and_group_norm_affine():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(16))
    method = tta_bench.create_method("rotta", model)
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert trainable == {f"{i}.{k}" for i in (1, 2, 4) for k in ("weight", "bias")}


def test_update_every_update_frequency_samples(tiny_model):
    method = tta_bench.create_method("rotta", tiny_model, update_frequency=5)
    calls = []
    original = method.update
    method.update = lambda: (calls.append((method.seen, method.memory.occupancy())), original())
    per_batch = []
    for size in (3, 3, 4, 2, 3):
        before = len(calls)
        method(torch.rand(size, 3, 6, 6))
        per_batch.append(len(calls) - before)
    # After samples 5, 10 and 15 (mid-batch), with the triggering sample already in memory.
    assert per_batch == [0, 1, 1, 0, 1]
    assert [seen for seen, _ in calls] == [5, 10, 15]
    assert calls[0][1] == 5


def test_update_hand_computed(tiny_model):
    """Teacher output returned; memory batch loss, one Adam step, teacher EMA; identity augmentation."""
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("rotta", tiny_model, update_frequency=4, lr=0.01)
    method.augment = lambda x: x  # deterministic: the student sees the clean memory batch
    x = torch.rand(4, 3, 6, 6) * 2
    out = method(x)
    with torch.no_grad():
        expected_out = copy.deepcopy(ref).eval()(x)  # eval robust BN == source BN statistics
    torch.testing.assert_close(out, expected_out)
    # Memory: all four samples (quota 64/3), class by class in insertion order, ages 4..1.
    labels = expected_out.argmax(1).tolist()
    order = [i for c in range(3) for i in range(4) if labels[i] == c]
    ages = torch.tensor([4.0 - i for i in order])
    data = x[order]
    w = torch.exp(-ages / 64) / (1 + torch.exp(-ages / 64))
    # Robust BN in train mode with source statistics, then the batch's.
    h = ref.conv(data).detach()
    mean = 0.95 * ref.bn.running_mean + 0.05 * h.mean((0, 2, 3))
    var = 0.95 * ref.bn.running_var + 0.05 * h.var((0, 2, 3), unbiased=False)
    c = (None, slice(None), None, None)
    gamma, beta = ref.bn.weight.detach().clone().requires_grad_(), ref.bn.bias.detach().clone().requires_grad_()
    z = (h - mean[c]) / torch.sqrt(var[c] + 1e-5)
    student = ref.fc(torch.relu(z * gamma[c] + beta[c]).mean((2, 3)))
    teacher = ref.fc(torch.relu(z * ref.bn.weight[c] + ref.bn.bias[c]).mean((2, 3))).detach()
    loss = (-(teacher.softmax(1) * student.log_softmax(1)).sum(1) * w).mean()
    grads = torch.autograd.grad(loss, (gamma, beta))
    new = [p.detach() - 0.01 * g / (g.abs() + 1e-8) for p, g in zip((gamma, beta), grads)]  # Adam step 1
    torch.testing.assert_close(method.model.bn.weight.detach(), new[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.model.bn.bias.detach(), new[1], rtol=1e-5, atol=1e-6)
    # Both models updated their own robust-BN statistics from the memory batch.
    for m in (method.model, method.teacher):
        torch.testing.assert_close(m.bn.running_mean, mean)
        torch.testing.assert_close(m.bn.running_var, var)
    # Teacher EMA over all parameters: 0.999 teacher + 0.001 student.
    torch.testing.assert_close(method.teacher.bn.weight, 0.999 * ref.bn.weight + 0.001 * new[0])
    torch.testing.assert_close(method.teacher.bn.bias, 0.999 * ref.bn.bias + 0.001 * new[1])
    torch.testing.assert_close(method.teacher.conv.weight, ref.conv.weight)
    # The next prediction comes from the updated teacher in eval mode.
    x2 = torch.rand(3, 3, 6, 6)
    torch.testing.assert_close(method(x2), method.teacher.eval()(x2))


def test_reset_restores_everything(tiny_model):
    original = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("rotta", tiny_model, update_frequency=4, memory_size=6)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(3):
        method(torch.rand(5, 3, 6, 6))
    changed = method.state_dict()
    assert changed["seen"] == 15 and changed["memory"] is not None and changed["optimizer"]["state"]
    assert not torch.allclose(changed["teacher"]["bn.running_mean"], initial["teacher"]["bn.running_mean"])
    assert not torch.allclose(changed["model"]["bn.weight"], initial["model"]["bn.weight"])
    method.reset()
    after = method.state_dict()
    torch.testing.assert_close(after["model"], initial["model"])
    torch.testing.assert_close(after["teacher"], initial["teacher"])
    assert after["optimizer"]["state"] == {} and after["seen"] == 0 and method.memory is None
    # After reset the method adapts exactly like a fresh one under the same random stream.
    fresh = tta_bench.create_method("rotta", original, update_frequency=4, memory_size=6)
    assert_adapts_alike(method, fresh, batch_size=5)
    torch.testing.assert_close(method.state_dict()["model"], fresh.state_dict()["model"])
    assert method.memory.state_dict()["items"] == fresh.memory.state_dict()["items"]


def test_predict_is_the_teacher_without_update(tiny_model):
    method = tta_bench.create_method("rotta", tiny_model)
    before = copy.deepcopy(method.state_dict())
    x = torch.rand(4, 3, 6, 6)
    torch.testing.assert_close(method.predict(x), method.teacher.eval()(x))
    torch.testing.assert_close(method.state_dict()["teacher"], before["teacher"])
    assert method.seen == 0 and method.memory is None
