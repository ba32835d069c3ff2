"""CoTTA on a tiny model: set-up, one hand-computed step, augmentation averaging, reset."""

from __future__ import annotations

import copy

import pytest
import torch

import tta_bench
from conftest import batch_stats_copy
from tta_bench.methods import method_class
from tta_bench.methods.augment import CoTTAAugment
from tta_bench.methods.losses import soft_cross_entropy, symmetric_cross_entropy

CONFIDENT = dict(ap=0.0)  # mean confidence is never below 0: always the plain teacher pass
UNSURE = dict(ap=1.1)  # always below: always the augmentation mean



def _perturb_teacher(method) -> None:
    """Move the teacher away from the student, so that the first step has a non-zero gradient."""
    with torch.no_grad():
        method.teacher.fc.bias += torch.tensor([1.0, -0.5, 0.2])
        method.teacher.bn.weight *= 1.3


def test_setup_trains_every_weight_and_bias_with_batch_statistics(tiny_model):
    method = tta_bench.create_method("cotta", tiny_model)
    assert tiny_model.training and tiny_model.bn.running_mean is None and tiny_model.bn.running_var is None
    assert all(p.requires_grad for p in tiny_model.parameters())
    names = {n for n, p in tiny_model.named_parameters()}
    assert names == {"conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    optimized = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in tiny_model.parameters()}
    for copy_ in (method.teacher, method.anchor):
        assert copy_.training and copy_.bn.running_mean is None
        assert not any(p.requires_grad for p in copy_.parameters())
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copy_.parameters(), tiny_model.parameters()))


def test_presets():
    cifar, imagenet = (method_class("cotta").make_hparams(f) for f in ("cifar", "imagenet"))
    assert (cifar.optimizer, cifar.lr, cifar.mt, cifar.rst, cifar.ap, cifar.loss) == ("adam", 1e-3, 0.999, 0.01, 0.92, "soft_ce")
    assert (imagenet.optimizer, imagenet.lr, imagenet.momentum, imagenet.nesterov) == ("sgd", 0.01, 0.9, True)
    assert (imagenet.mt, imagenet.rst, imagenet.ap, imagenet.loss) == (0.999, 0.001, 0.1, "symmetric_ce")
    assert cifar.n_augmentations == imagenet.n_augmentations == 32
    assert cifar.augment_always and not imagenet.augment_always  # official CIFAR vs ImageNet code


def _hand_step(student, teacher, x, loss_fn, step_fn, mt):
    """Expected (output, student after the step, teacher after the EMA) of one plain-teacher step."""
    student, teacher = batch_stats_copy(student), batch_stats_copy(teacher)
    params = dict(student.named_parameters())
    with torch.no_grad():
        target = teacher(x)
    grads = torch.autograd.grad(loss_fn(student(x), target).mean(0), list(params.values()))
    new_student = {n: (p - step_fn(g)).detach() for (n, p), g in zip(params.items(), grads)}
    new_teacher = {n: mt * p.detach() + (1 - mt) * new_student[n] for n, p in teacher.named_parameters()}
    return target, new_student, new_teacher


@pytest.mark.parametrize("rst", [0.0, 1.0])
def test_one_adam_step_soft_ce_equals_hand_computed(tiny_model, rst):
    method = tta_bench.create_method("cotta", tiny_model, lr=0.01, mt=0.9, rst=rst, **CONFIDENT)
    source = copy.deepcopy(tiny_model)
    _perturb_teacher(method)
    x = torch.rand(8, 3, 6, 6)
    adam_first_step = lambda g: 0.01 * g / (g.abs() + 1e-8)  # noqa: E731  (m/(1-b1) = g, v/(1-b2) = g^2)
    target, student, teacher = _hand_step(tiny_model, method.teacher, x, soft_cross_entropy, adam_first_step, 0.9)
    out = method(x)
    torch.testing.assert_close(out, target)  # the plain teacher pass, before the update
    for n, p in method.teacher.named_parameters():
        torch.testing.assert_close(p, teacher[n], rtol=1e-5, atol=1e-6)
    for n, p in tiny_model.named_parameters():  # rst 0: the stepped student; rst 1: the source
        expected = student[n] if rst == 0.0 else dict(source.named_parameters())[n].detach()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(student[n], p) for n, p in source.named_parameters())  # the step moved


def test_one_sgd_nesterov_step_symmetric_ce_equals_hand_computed(tiny_model):
    method = tta_bench.create_method("cotta", tiny_model, family="imagenet", rst=0.0, mt=0.5, **CONFIDENT)
    _perturb_teacher(method)
    x = torch.rand(8, 3, 6, 6)
    nesterov_first_step = lambda g: 0.01 * (g + 0.9 * g)  # noqa: E731  (buffer = g on the first step)
    target, student, teacher = _hand_step(tiny_model, method.teacher, x, symmetric_cross_entropy,
                                          nesterov_first_step, 0.5)
    torch.testing.assert_close(method(x), target)
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p.detach(), student[n], rtol=1e-5, atol=1e-6)
    for n, p in method.teacher.named_parameters():
        torch.testing.assert_close(p, teacher[n], rtol=1e-5, atol=1e-6)


def _count_teacher_calls(method) -> list[int]:
    calls = [0]
    method.teacher.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_unsure_batches_average_n_augmented_teacher_passes(tiny_model):
    method = tta_bench.create_method("cotta", tiny_model, n_augmentations=5, augment_always=False, **UNSURE)
    teacher = copy.deepcopy(method.teacher)
    calls = _count_teacher_calls(method)
    x = torch.rand(8, 3, 6, 6)
    torch.manual_seed(7)
    out = method(x)
    torch.manual_seed(7)  # the student and anchor passes draw nothing: the same augmentations follow
    augment = CoTTAAugment()
    with torch.no_grad():
        expected = torch.stack([teacher(augment(x)) for _ in range(5)]).mean(0)
    torch.testing.assert_close(out, expected)
    assert calls[0] == 5


def test_confident_batches_take_one_plain_teacher_pass(tiny_model):
    method = tta_bench.create_method("cotta", tiny_model, augment_always=False, **CONFIDENT)
    calls = _count_teacher_calls(method)
    method(torch.rand(8, 3, 6, 6))
    assert calls[0] == 1


@pytest.mark.parametrize("hp", [CONFIDENT, UNSURE])
def test_augment_always_runs_the_passes_and_returns_the_same_choice(tiny_model, hp):
    other = copy.deepcopy(tiny_model)
    always = tta_bench.create_method("cotta", tiny_model, n_augmentations=3, augment_always=True, **hp)
    skipping = tta_bench.create_method("cotta", other, n_augmentations=3, augment_always=False, **hp)
    calls = _count_teacher_calls(always)
    x = torch.rand(8, 3, 6, 6)
    torch.manual_seed(4)
    out = always(x)
    torch.manual_seed(4)
    torch.testing.assert_close(out, skipping(x))
    assert calls[0] == 4  # the plain pass and 3 augmented passes, whichever is returned


def test_reset_restores_student_teacher_anchor_and_optimizer(tiny_model):
    original = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("cotta", tiny_model, n_augmentations=2, rst=0.1, **UNSURE)
    initial = copy.deepcopy(method.state_dict())
    for _ in range(3):
        method(torch.rand(8, 3, 6, 6))
    assert not torch.allclose(method.teacher.fc.weight, initial["teacher"]["fc.weight"])
    with torch.no_grad():
        method.anchor.fc.bias += 1.0  # the anchor never changes, but reset restores it regardless
    method.reset()
    state = method.state_dict()
    for key in ("model", "teacher", "anchor"):
        torch.testing.assert_close(state[key], initial[key])
    assert state["optimizer"]["state"] == {}
    fresh = tta_bench.create_method("cotta", original, n_augmentations=2, rst=0.1, **UNSURE)
    for seed in (1, 2):
        x = torch.rand(8, 3, 6, 6)
        torch.manual_seed(seed)
        a = method(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(a, fresh(x))
