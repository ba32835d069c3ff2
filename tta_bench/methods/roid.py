"""ROID: diversity- and certainty-weighted soft likelihood ratio, weight ensembling, prior correction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tta_bench.methods.augment import ROID as ROID_AUGMENT
from tta_bench.methods.augment import CoTTAAugment
from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import softmax_entropy, symmetric_cross_entropy
from tta_bench.methods.norm_layers import norm_affine_parameters, train_only
from tta_bench.methods.registry import register_method


@dataclass(frozen=True)
class ROIDHparams(OptimizerHparams):
    """The optimizer fields and the public harness's cfg.ROID options (conf.py defaults)."""

    use_weighting: bool = True  # diversity x certainty sample weights
    use_prior_correction: bool = True  # rescale the returned logits by the smoothed batch prior
    use_consistency: bool = True  # SCE between model(aug(x)) and model(x)
    momentum_src: float = 0.99  # theta <- m theta + (1 - m) theta_src after every step
    momentum_probs: float = 0.9  # EMA of the batch-mean prediction (diversity reference)
    temperature: float = 1 / 3


def soft_likelihood_ratio(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample SLR loss -sum_c p~ log(p~ / (1 - p~) + eps), p~ = clamp(softmax, 0, clip)."""
    probs = logits.softmax(1).clamp(0.0, clip)
    return -(probs * torch.log(probs / (1 - probs) + eps)).sum(1)


def min_max(values: torch.Tensor) -> torch.Tensor:
    """(v - min) / (max - min); all zeros when the range is zero (the official code divides 0 by 0)."""
    low, span = values.min(), values.max() - values.min()
    return (values - low) / torch.where(span > 0, span, torch.ones_like(span))


@register_method("roid")
class ROID(Method):
    """Weighted SLR + consistency on norm affine parameters, ensembled with the source after each step.

    Paper: Marsden, Döbler, Yang, "Universal Test-time Adaptation through Weight Ensembling, Diversity
    Weighting, and Prior Correction" (WACV 2024). Official code: mariodoebler/test-time-adaptation
    (`classification/methods/roid.py`, `utils/losses.py`, `utils/misc.py: ema_update_model`,
    `conf.py` ROID options, `cfgs/{cifar10_c,imagenet_c}/roid.yaml`).

    Per step: logits z = model(x) (eval mode, batch-statistics BN). Weights (no gradient):
    w_div = minmax(1 - cos(ema, softmax z)), w_cert = minmax(-H(z)), w = exp(w_div w_cert / T),
    w = 0 where w_div < mean(w_div); then ema <- 0.9 ema + 0.1 mean softmax z (ema starts uniform).
    Loss = sum w SLR(z) / N + sum_kept w SCE(model(aug(x_kept)), z_kept) / N, with the augmented
    forward over the kept samples only (batch-statistics BN sees that subset) and gradients through
    both arguments of the SCE. N is the configured batch size in the official code; here the largest
    batch seen so far (identical from the first full batch on). One optimizer step, then every
    trainable parameter theta <- 0.99 theta + 0.01 theta_src. Returned: the pre-update logits times
    the smoothed prior (prior + s) / (1 + s C), prior = mean softmax z, s = max(1/B, 1/C) / max(prior)
    -- logits, not probabilities. `predict` applies the same correction.
    Defaults: CIFAR Adam lr 1e-3, beta 0.9, wd 0, batch 200; ImageNet SGD lr 2.5e-4, momentum 0.9,
    nesterov True (conf.py default), wd 0, batch 64. Augmentation: the CoTTA transform with reflect
    padding and no blur/noise (harness `get_tta_transforms(padding_mode="reflect", cotta_augs=False)`).

    Host syncs: the consistency term selects the kept samples by a data-dependent boolean index (one
    sync per step, inherent: BN statistics of the augmented batch depend on which samples are kept);
    without it there is none.
    Deviations: a zero range in the min-max scaling gives 0 instead of NaN (batch of 1 or identical
    samples; the official loss and then all weights become NaN); an empty kept set skips the augmented
    forward; consistency without weighting uses the whole batch with weight 1 (the official code fails
    there). Trains LayerNorm/GroupNorm/any BatchNorm affine (the official collects BN1d/2d, LN, GN).
    """

    Hparams = ROIDHparams
    state_tensors = ("class_probs",)
    PRESETS = {
        "cifar": dict(optimizer="adam", lr=1e-3, beta=0.9, weight_decay=0.0),
        "imagenet": dict(optimizer="sgd", lr=2.5e-4, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0),
    }

    def configure_model(self) -> None:
        """Eval mode, batch-statistics BN, gradients for norm affine only; remember the source weights."""
        train_only(self.model, norm_affine_parameters(self.model), train_mode=False)
        self.params = [p for _, p in norm_affine_parameters(self.model)]
        self.source = [p.detach().clone() for p in self.params]
        self.class_probs: torch.Tensor | None = None  # uniform, allocated once C is known
        self.augment = CoTTAAugment(ROID_AUGMENT)
        self.loss_batch_size = 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Affine scale and shift of every BN/LN/GN layer."""
        return self.params

    @torch.no_grad()
    def sample_weights(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample weights and the kept-sample mask (None: all kept); updates the prediction EMA."""
        if not self.hparams.use_weighting:
            return torch.ones(len(logits), device=logits.device), None
        if self.class_probs is None:
            self.class_probs = torch.full((logits.shape[1],), 1 / logits.shape[1], device=logits.device)
        probs = logits.softmax(1)
        diversity = min_max(1 - F.cosine_similarity(self.class_probs.unsqueeze(0), probs, dim=1))
        keep = ~(diversity < diversity.mean())
        certainty = min_max(-softmax_entropy(logits))
        weights = torch.exp(diversity * certainty / self.hparams.temperature) * keep
        m = self.hparams.momentum_probs
        self.class_probs = m * self.class_probs + (1 - m) * probs.mean(0)
        return weights, keep

    def consistency(self, x: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
                    keep: torch.Tensor | None) -> torch.Tensor:
        """Weighted SCE between the model on augmented kept samples and their logits (sum, no /N)."""
        if keep is not None:
            x, logits, weights = x[keep], logits[keep], weights[keep]  # host sync (data-dependent size)
        if len(x) == 0:
            return logits.new_zeros(())
        aug_logits = self.model(self.augment(x))
        return (symmetric_cross_entropy(aug_logits, logits) * weights).sum()

    def loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Weighted SLR (+ weighted consistency) summed and divided by the configured batch size."""
        weights, keep = self.sample_weights(logits.detach())
        loss = (soft_likelihood_ratio(logits) * weights).sum() / self.loss_batch_size
        if self.hparams.use_consistency:
            loss = loss + self.consistency(x, logits, weights, keep) / self.loss_batch_size
        return loss

    @torch.no_grad()
    def ensemble_with_source(self) -> None:
        """theta <- m theta + (1 - m) theta_src for the trainable parameters (as ema_update_model)."""
        m = self.hparams.momentum_src
        if m < 1.0:
            torch._foreach_mul_(self.params, m)
            torch._foreach_add_(self.params, torch._foreach_mul(self.source, 1 - m))

    def correct_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits times the smoothed batch prior (identity when prior correction is off)."""
        if not self.hparams.use_prior_correction:
            return logits
        prior = logits.softmax(1).mean(0)
        smooth = max(1 / logits.shape[0], 1 / logits.shape[1]) / prior.max()
        return logits * ((prior + smooth) / (1 + smooth * logits.shape[1]))

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Forward, weighted loss, step, weight ensembling; returns the prior-corrected pre-update logits."""
        self.loss_batch_size = max(self.loss_batch_size, len(x))
        for _ in range(self.hparams.steps):
            logits = self.model(x)
            self.loss(x, logits).backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.ensemble_with_source()
        with torch.no_grad():
            return self.correct_prior(logits.detach())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Prior-corrected logits of the current state, without an update."""
        return self.correct_prior(self.model(x))

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, the prediction EMA and the source weights."""
        return {**super().state_dict(), "source": [s.clone() for s in self.source]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        super().load_state_dict(state)
        for s, saved in zip(self.source, state["source"]):
            s.copy_(saved)
