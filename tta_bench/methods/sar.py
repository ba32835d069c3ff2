"""SAR: sharpness-aware and reliable entropy minimisation with model recovery."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tta_bench.errors import ConfigError
from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.norm_layers import sar_parameters, train_only
from tta_bench.methods.registry import register_method
from tta_bench.methods.sam import SAM

LrRule = Literal["fixed", "resnet", "vit"]


def official_lr(lr: float, rule: LrRule, batch_size: int) -> float:
    """The learning rate of SAR/DeYO `main.py` for a batch size.

    "resnet": lr for batches >= 32, else lr * 2 * B / 64 (ResNet-50 BN/GN, lr 2.5e-4);
    "vit": lr * B / 64 (ViT-B/16, lr 1e-3); "fixed": lr as given (the public harness).
    """
    if rule == "fixed":
        return lr
    if rule == "resnet":
        return lr if batch_size >= 32 else lr / 64 * batch_size * 2
    if rule == "vit":
        return lr / 64 * batch_size
    raise ConfigError(f"unknown lr_rule {rule!r}; valid: fixed, resnet, vit")


def set_official_lr(method: Method, batch_size: int) -> None:
    """Set `method`'s optimizer lr by its `lr_rule` for the stream's batch size.

    The stream's batch size is the first batch's (main.py's test_batch_size), so a short last
    batch keeps the same lr.
    """
    if getattr(method, "_stream_batch_size", None) is None:
        method._stream_batch_size = batch_size
    lr = official_lr(method.hparams.lr, method.hparams.lr_rule, method._stream_batch_size)
    for group in method.optimizer.param_groups:
        group["lr"] = lr


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` without a host sync; 0 (and a zero gradient) when the mask is empty.

    The official `values[mask].mean()` gives NaN with a zero gradient for an empty mask; the
    gradient is the same here, only the reported value differs.
    """
    return (values * mask).sum() / mask.sum().clamp_min(1)


@dataclass(frozen=True)
class SARHparams(OptimizerHparams):
    """SAR's fields: entropy margin, SAM radius, recovery EMA and threshold, lr rule."""

    e_margin_scale: float = 0.4  # E0 = e_margin_scale * ln(C)
    rho: float = 0.05
    adaptive: bool = False  # ASAM
    ema: float = 0.9  # moving average of the second loss
    reset_constant: float = 0.2  # recover when the moving average drops below this
    recovery_resets_momentum: bool = False  # official: the SGD momentum survives a recovery
    recovery_clears_ema: bool = False  # official: the moving average survives a recovery
    lr_rule: LrRule = "fixed"


@register_method("sar")
class SAR(Method):
    """Reliable (H < E0) entropy minimisation with a SAM step, and recovery when the loss collapses.

    Paper: Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World" (ICLR 2023).
    Official code: mr-eggplant/SAR (`sar.py`, `sam.py`, `main.py`). Per batch: forward, keep
    H < E0 = 0.4 ln C, backward the mean entropy; SAM first step (w + rho g/||g||, rho 0.05); second
    forward, keep the first selection's samples that again have H < E0, backward; restore w, base
    step. The second loss feeds a moving average (0.9/0.1, first value as is, batches with no
    selected sample skipped); when it falls below 0.2 the trained parameters return to their
    post-set-up values. Returns the first forward's logits (pre-update).
    Model set-up as the official `configure_model`: train mode, batch-statistics BatchNorm (running
    statistics dropped); LayerNorm/GroupNorm have no statistics and only their affine parameters are
    trained. Trained: norm affine parameters outside layer4 / blocks.9-11 / the final norm.
    Optimizer: SGD momentum 0.9, nesterov off. ImageNet: lr 2.5e-4 with the official batch rule
    (`lr_rule` "resnet": x 2B/64 for B < 32; "vit" for ViT-B: 1e-3 x B/64). CIFAR: the public
    harness's SGD lr 1e-3 (it ignores its Adam setting for SAR), batch 200.

    Empty selections: the official mean over no sample is NaN but its gradient is zero, so SAM does
    not move and the base optimizer still takes its momentum step; reproduced with a masked mean
    (no NaN anywhere). Everything, including the recovery decision, runs on the device: the
    recovery is a `torch.where` between current and post-set-up parameters, so no host sync. The
    average is kept in float64 as the official Python float; its input (a masked sum / count rather
    than the mean of the compacted selection) can differ from the official value in the last bit.
    Recovery follows what the official code effectively does, not what it intends: (1) it reloads
    the SAM wrapper's optimizer state, which does not hold the base SGD's momentum buffers, so the
    momentum survives (`recovery_resets_momentum=True` zeroes it, SGD only; equal to a fresh SGD
    for dampening 0); (2) `SAR.forward` clears the average in `reset()` and then overwrites it with
    the value computed before the recovery, so the average survives and the model recovers again at
    every batch until the average climbs back over 0.2 (`recovery_clears_ema=True` clears it, as
    the public harness does). `reset()` (the runner's) restores everything.

    Deviation: LayerNorm/GroupNorm/BatchNorm1d affine parameters are collected by the same rule as
    BatchNorm2d (the official code lists BN2d, LN, GN); identical for BN2d/LN/GN models.
    """

    Hparams = SARHparams
    state_tensors = ("loss_ema", "has_ema", "recoveries")
    PRESETS = {
        "cifar": dict(optimizer="sgd", lr=1e-3, momentum=0.9, nesterov=False, lr_rule="fixed"),
        "imagenet": dict(optimizer="sgd", lr=2.5e-4, momentum=0.9, nesterov=False, lr_rule="resnet"),
    }

    def __init__(self, model: nn.Module, hparams: SARHparams):
        if hparams.recovery_resets_momentum and hparams.optimizer != "sgd":
            raise ConfigError("recovery_resets_momentum needs optimizer=sgd")
        super().__init__(model, hparams)
        self.sam = SAM(self.optimizer, rho=hparams.rho, adaptive=hparams.adaptive) if self.optimizer else None

    def configure_model(self) -> None:
        """Train mode, batch-statistics BN, gradients only for the SAR parameter set."""
        train_only(self.model, sar_parameters(self.model))
        self.loss_ema: torch.Tensor | None = None  # float64 like the official Python float
        self.has_ema: torch.Tensor | None = None
        self.recoveries: torch.Tensor | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Norm affine parameters outside layer4 / blocks.9-11 / the final norm."""
        return [p for _, p in sar_parameters(self.model)]

    def snapshot(self) -> None:
        """Remember the post-set-up state, and the parameter values a recovery returns to."""
        super().snapshot()
        params = self.optimizer.param_groups[0]["params"] if self.optimizer else []
        self._recovery_values = [p.detach().clone() for p in params]

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """`steps` SAR updates on `x`; returns the logits of the last step's first forward."""
        if self.optimizer is None:
            return self.predict(x)
        set_official_lr(self, x.shape[0])
        for _ in range(self.hparams.steps):
            outputs = self.sar_step(x)
        return outputs

    def sar_step(self, x: torch.Tensor) -> torch.Tensor:
        """Select, SAM first step, second forward and selection, restore and step, recovery check."""
        self.optimizer.zero_grad()
        outputs = self.model(x)
        e_margin = self.hparams.e_margin_scale * math.log(outputs.shape[1])
        entropy = softmax_entropy(outputs)
        selected = entropy.detach() < e_margin
        masked_mean(entropy, selected).backward()
        self.sam.first_step()
        self.optimizer.zero_grad()
        entropy2 = softmax_entropy(self.model(x))
        selected2 = selected & (entropy2.detach() < e_margin)
        loss2 = masked_mean(entropy2, selected2)
        loss2.backward()
        self.sam.second_step()
        self.optimizer.zero_grad()
        self.update_ema_and_recover(loss2.detach(), selected2.any())
        return outputs.detach()

    @torch.no_grad()
    def update_ema_and_recover(self, loss: torch.Tensor, valid: torch.Tensor) -> None:
        """EMA of the second loss (skipped when nothing was selected); recover below reset_constant."""
        if self.loss_ema is None:
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64
            self.loss_ema = torch.zeros((), dtype=dtype, device=loss.device)
            self.has_ema = torch.zeros((), dtype=torch.bool, device=loss.device)
            self.recoveries = torch.zeros((), dtype=torch.long, device=loss.device)
        m, new = self.hparams.ema, loss.to(self.loss_ema.dtype)
        updated = torch.where(self.has_ema, m * self.loss_ema + (1 - m) * new, new)
        self.loss_ema = torch.where(valid, updated, self.loss_ema)
        self.has_ema = self.has_ema | valid
        recover = self.has_ema & (self.loss_ema < self.hparams.reset_constant)
        for p, value in zip(self.optimizer.param_groups[0]["params"], self._recovery_values):
            p.copy_(torch.where(recover, value, p))
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if self.hparams.recovery_resets_momentum and buf is not None:
                buf.copy_(torch.where(recover, torch.zeros_like(buf), buf))
        if self.hparams.recovery_clears_ema:
            self.has_ema = self.has_ema & ~recover
            self.loss_ema = torch.where(recover, torch.zeros_like(self.loss_ema), self.loss_ema)
        self.recoveries = self.recoveries + recover.long()
