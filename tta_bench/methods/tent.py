"""Tent: test-time entropy minimisation of the normalisation affine parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.norm_layers import norm_affine_parameters, train_only
from tta_bench.methods.registry import register_method


@dataclass(frozen=True)
class TentHparams(OptimizerHparams):
    """Tent's hyperparameters: the optimizer fields and the number of steps per batch."""


@register_method("tent")
class Tent(Method):
    """Minimise the mean prediction entropy of each test batch by training norm affine parameters.

    Paper: Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization" (ICLR 2021).
    Official code: DequanWang/tent (`tent.py`, `conf.py`, `cfgs/tent.yaml`).
    Defaults: CIFAR-like Adam lr 1e-3, betas (0.9, 0.999), wd 0, batch 200 (cfgs/tent.yaml);
    ImageNet-like SGD lr 2.5e-4, momentum 0.9, dampening 0, nesterov True (conf.py default),
    wd 0, batch 64 (paper). One step per batch; the returned logits come from the forward pass
    that the update is computed from, i.e. before the update.

    Deviation: also trains LayerNorm/GroupNorm affine parameters where a model has them (as the
    public harness does); the official code collects BatchNorm2d only. Identical for BN-only
    models such as WRN-28-10, ResNet-50 and the digits_c model.
    """

    Hparams = TentHparams
    PRESETS = {
        "cifar": dict(optimizer="adam", lr=1e-3),
        "imagenet": dict(optimizer="sgd", lr=2.5e-4, momentum=0.9, nesterov=True),
    }

    def configure_model(self) -> None:
        """Train mode, gradients only for norm affine parameters, batch-statistics BN."""
        train_only(self.model, norm_affine_parameters(self.model))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Affine scale and shift of every BN/LN/GN layer."""
        return [p for _, p in norm_affine_parameters(self.model)]

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Forward, entropy loss, one optimizer step; returns the pre-update logits."""
        for _ in range(self.hparams.steps):
            outputs = self.model(x)
            loss = softmax_entropy(outputs).mean(0)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
        return outputs.detach()
