"""Penultimate features and classifier of any model, for methods that work in feature space.

LAME and RMT need the input of the classification head. Every model in the zoo ends with one
linear head (SmallResNet/ResNet `fc`, ResNeXt `classifier`, ViT `heads.head`), so the head is the
last `nn.Linear` in module order and the features are what it receives. A temporary forward
pre-hook captures them, so no model is restructured and copies of the model stay plain modules.
"""

from __future__ import annotations

import torch
from torch import nn


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's classification head: its last `nn.Linear` module."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise TypeError(f"{type(model).__name__} has no nn.Linear head; feature-space methods need one")
    return heads[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of one forward pass of `model` on `x`."""
    captured: list[torch.Tensor] = []
    handle = classifier_of(model).register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1], logits
