"""Mean-teacher building blocks: the EMA teacher update and CoTTA's stochastic restore."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student whose parameters take no gradient (updated only by `ema_update`)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_().requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, over parameters (not buffers).

    As the official CoTTA/RMT/RoTTA code: only `parameters()` are averaged; with batch-statistics BN
    there are no statistics buffers to average.
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def restorable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters named `weight` or `bias` of their module (what CoTTA restores)."""
    return [(name, p) for name, p in model.named_parameters()
            if p.requires_grad and name.rsplit(".", 1)[-1] in ("weight", "bias")]


@torch.no_grad()
def stochastic_restore(model: nn.Module, source: dict[str, torch.Tensor], probability: float) -> None:
    """Reset each weight element to its source value with `probability` (CoTTA's stochastic restore).

    The mask is drawn on the parameter's device (the official code draws it on the CPU and copies it),
    so the random stream differs from the official one while the distribution is the same.
    """
    for name, p in restorable_parameters(model):
        mask = torch.rand(p.shape, device=p.device) < probability
        p.copy_(torch.where(mask, source[name], p))
