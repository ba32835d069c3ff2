"""EATA and ETA: entropy minimisation on reliable, non-redundant samples (+ Fisher anti-forgetting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.norm_layers import norm_affine_parameters, train_only
from tta_bench.methods.registry import register_method
from tta_bench.progress import progress_bar


@dataclass(frozen=True)
class ETAHparams(OptimizerHparams):
    """Entropy margin E0 = e_margin_scale * ln(C) and the cosine redundancy threshold d_margin."""

    e_margin_scale: float = 0.4
    d_margin: float = 0.05
    ema: float = 0.9  # moving average of the mean prediction


@dataclass(frozen=True)
class EATAHparams(ETAHparams):
    """ETA's fields plus the Fisher regulariser: weight, source images and their batch size."""

    fisher_alpha: float = 2000.0
    fisher_size: int = 2000
    fisher_batch_size: int = 64


IMAGENET = dict(optimizer="sgd", lr=2.5e-4, momentum=0.9, nesterov=False, d_margin=0.05)
CIFAR = dict(optimizer="adam", lr=1e-3, d_margin=0.4)  # the public harness's CIFAR values


@register_method("eta")
class ETA(Method):
    """ETA: Tent's entropy loss on reliable (H < E0) and non-redundant samples, weighted by exp(E0 - H).

    Paper: Niu et al., "Efficient Test-Time Model Adaptation without Forgetting" (ICML 2022).
    Official code: mr-eggplant/EATA (`eata.py`, `main.py`). ImageNet: SGD 2.5e-4 momentum 0.9
    (nesterov off), E0 = 0.4 ln C, d_margin 0.05, batch 64. CIFAR: the public harness's Adam 1e-3,
    d_margin 0.4, batch 200. The moving average m of mean predictions starts unset, is initialised
    from the reliable samples of the first batch that has any, then m <- 0.9 m + 0.1 mean(p) over the
    selected samples. The loss is the mean over the selected samples; when none is selected the
    optimizer does not step (as the official code); that decision is the one host sync per batch.

    Deviation: trains LayerNorm/GroupNorm affine parameters too where a model has them (the official
    code collects BatchNorm2d only); identical for BN-only models.
    """

    Hparams = ETAHparams
    PRESETS = {"cifar": CIFAR, "imagenet": IMAGENET}
    state_tensors = ("mean_probs", "has_mean")

    def configure_model(self) -> None:
        """Train mode, gradients only for norm affine parameters, batch-statistics BN (as Tent)."""
        train_only(self.model, norm_affine_parameters(self.model))
        # m and whether it is set; the official code keeps None until a batch has reliable samples.
        self.mean_probs: torch.Tensor | None = None
        self.has_mean: torch.Tensor | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Affine scale and shift of every BN/LN/GN layer."""
        return [p for _, p in norm_affine_parameters(self.model)]

    def regulariser(self) -> torch.Tensor | float:
        """Extra loss term (EATA's Fisher penalty; none for ETA)."""
        return 0.0

    def select(self, probs: torch.Tensor, entropy: torch.Tensor, e_margin: float) -> torch.Tensor:
        """Boolean mask of reliable and (once m is set) non-redundant samples; updates m on the device."""
        if self.mean_probs is None:  # allocated at the first batch, when the number of classes is known
            self.mean_probs = torch.zeros(probs.shape[1], device=probs.device)
            self.has_mean = torch.zeros((), dtype=torch.bool, device=probs.device)
        cos = F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1)
        selected = (entropy < e_margin) & (~self.has_mean | (cos.abs() < self.hparams.d_margin))
        count = selected.sum()
        batch_mean = (probs * selected.unsqueeze(1)).sum(0) / count.clamp_min(1)
        m = self.hparams.ema
        updated = torch.where(self.has_mean, m * self.mean_probs + (1 - m) * batch_mean, batch_mean)
        self.mean_probs = torch.where(count > 0, updated, self.mean_probs)
        self.has_mean = self.has_mean | (count > 0)
        return selected

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Forward, select, weighted entropy (+ regulariser), step when any sample is selected."""
        outputs = self.model(x)
        entropy = softmax_entropy(outputs)
        e_margin = self.hparams.e_margin_scale * math.log(outputs.shape[1])
        selected = self.select(outputs.softmax(1).detach(), entropy.detach(), e_margin)
        weight = torch.exp(e_margin - entropy.detach()) * selected
        loss = (entropy * weight).sum() / selected.sum().clamp_min(1) + self.regulariser()
        if bool(selected.any()):  # host sync: the official code skips the step on empty selections
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad()
        return outputs.detach()


@register_method("eata")
class EATA(ETA):
    """EATA: ETA plus the Fisher penalty beta * sum F (theta - theta0)^2 against forgetting.

    Official code: mr-eggplant/EATA. The Fisher F is computed once before test time on
    `fisher_size` (2,000) clean source images with the model already configured: for each batch of
    `fisher_batch_size` (64), loss = CE(outputs, argmax outputs), F += grad^2; finally F /= number
    of batches; theta0 = the parameters at that time. ImageNet: beta 2000; CIFAR (public harness):
    beta 1.0. Source images are the first `fisher_size` of the clean train split in file order (the
    official code takes 2,000 shuffled ImageNet validation images); the artefacts are cached.
    """

    Hparams = EATAHparams
    PRESETS = {"cifar": {**CIFAR, "fisher_alpha": 1.0}, "imagenet": {**IMAGENET, "fisher_alpha": 2000.0}}
    needs_source = True

    def configure_model(self) -> None:
        """As ETA; the Fisher terms are installed by the preparation step."""
        super().configure_model()
        self.fishers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def regulariser(self) -> torch.Tensor | float:
        """beta * sum over trained parameters of F * (theta - theta0)^2."""
        terms = []
        for name, p in self.model.named_parameters():
            if name in self.fishers:
                fisher, theta0 = self.fishers[name]
                terms.append((fisher * (p - theta0) ** 2).sum())
        return self.hparams.fisher_alpha * torch.stack(terms).sum() if terms else 0.0

    @torch.enable_grad()
    def compute_preparation(self, source: Any, progress: bool = True) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of CE against the model's own predictions on clean source images."""
        device = next(self.model.parameters()).device
        n = min(self.hparams.fisher_size, len(source.images))
        subset = type(source)(source.images[:n], source.labels[:n], source.name)
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        fisher = {name: torch.zeros_like(p) for name, p in params.items()}
        batches = 0
        for x, _ in progress_bar(progress, iterable=subset.batches(self.hparams.fisher_batch_size, device),
                                 desc="eata: Fisher", total=-(-n // self.hparams.fisher_batch_size)):
            outputs = self.model(x)
            F.cross_entropy(outputs, outputs.argmax(1)).backward()
            for name, p in params.items():
                fisher[name] += p.grad.detach() ** 2
                p.grad = None
            batches += 1
        out = {f"fisher/{k}": v / batches for k, v in fisher.items()}
        return {**out, **{f"theta0/{k}": p.detach().clone() for k, p in params.items()}}

    def load_preparation(self, artefacts: dict[str, torch.Tensor]) -> None:
        """Install F and theta0 on the model's device."""
        device = next(self.model.parameters()).device
        names = [k.split("/", 1)[1] for k in artefacts if k.startswith("fisher/")]
        self.fishers = {n: (artefacts[f"fisher/{n}"].to(device), artefacts[f"theta0/{n}"].to(device)) for n in names}
