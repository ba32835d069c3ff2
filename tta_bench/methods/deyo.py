"""DeYO: entropy minimisation on samples whose prediction depends on the object's shape (PLPD)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision.transforms.functional as TF
from torch import nn

from tta_bench.errors import ConfigError
from tta_bench.methods.base import Method, OptimizerHparams
from tta_bench.methods.losses import softmax_entropy
from tta_bench.methods.norm_layers import sar_parameters, train_only
from tta_bench.methods.registry import register_method
from tta_bench.methods.sar import LrRule, masked_mean, set_official_lr

AugType = Literal["patch", "pixel", "occ"]


def patch_shuffle(x: torch.Tensor, patch_len: int = 4) -> torch.Tensor:
    """Cut each image into patch_len x patch_len patches and permute them, one permutation per image.

    As DeYO's "patch" transform: the image is resized to a multiple of patch_len (side taken from
    the width, as the official code does) and back; the permutations are argsort(rand) on the
    device, applied with one batched index.
    """
    b, c, h, w = x.shape
    side = (w // patch_len) * patch_len
    if (h, w) != (side, side):
        x = TF.resize(x, [side, side], antialias=True)
    n = side // patch_len
    patches = x.reshape(b, c, patch_len, n, patch_len, n).permute(0, 2, 4, 1, 3, 5).reshape(b, patch_len**2, c, n, n)
    perm = torch.argsort(torch.rand(b, patch_len**2, device=x.device), dim=-1)
    patches = patches[torch.arange(b, device=x.device).unsqueeze(1), perm]
    out = patches.reshape(b, patch_len, patch_len, c, n, n).permute(0, 3, 1, 4, 2, 5).reshape(b, c, side, side)
    return out if (h, w) == (side, side) else TF.resize(out, [w, w], antialias=True)


def pixel_shuffle(x: torch.Tensor) -> torch.Tensor:
    """One random permutation of pixel positions, shared by the batch and channels (DeYO "pixel")."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w)[:, :, torch.randperm(h * w, device=x.device)].reshape(b, c, h, w)


def occlude(x: torch.Tensor, size: int, row: int, col: int) -> torch.Tensor:
    """Replace a size x size window at (row, col) by each image's per-channel mean (DeYO "occ")."""
    out = x.clone()
    out[:, :, row:row + size, col:col + size] = x.mean((2, 3), keepdim=True)
    return out


@dataclass(frozen=True)
class DeYOHparams(OptimizerHparams):
    """DeYO's fields with the official names and defaults (config.py), margins as multiples of ln C."""

    deyo_margin_scale: float = 0.5  # selection: H < deyo_margin_scale * ln C
    e_margin_scale: float = 0.4  # weighting: E0 = e_margin_scale * ln C
    plpd_threshold: float = 0.2
    filter_ent: bool = True
    filter_plpd: bool = True
    reweight_ent: bool = True
    reweight_plpd: bool = True
    aug_type: AugType = "patch"
    patch_len: int = 4
    occlusion_size: int = 112
    row_start: int = 56
    column_start: int = 56
    lr_rule: LrRule = "fixed"


@register_method("deyo")
class DeYO(Method):
    """Entropy minimisation on confident samples whose prediction drops when the shape is destroyed.

    Paper: Lee et al., "Entropy is not Enough for Test-Time Adaptation: From the Perspective of
    Disentangled Factors" (ICLR 2024). Official code: Jhyun17/DeYO (`methods/deyo.py`, `main.py`,
    `config.py`, `exp_deyo.sh`). Per batch: forward; keep H < 0.5 ln C (S1; with filter_ent off the
    official test H <= ln 1000 is kept); shuffle the patches of x[S1] (4x4 grid, a random
    permutation per image) and forward them without gradient; PLPD = p[c] - p'[c] with c = argmax p;
    keep PLPD > tau (S2); loss = mean over S2 of (exp(-(H - E0)) + exp(PLPD)) H, coefficients
    detached, E0 = 0.4 ln C; one step, none when S1 or S2 is empty. Returns the first forward's
    logits (pre-update). Model set-up and trained parameters as SAR (train mode, batch-statistics
    BN, norm affine parameters outside layer4 / blocks.9-11 / the final norm).
    ImageNet: SGD 2.5e-4 momentum 0.9 (nesterov off) with the official batch rule, tau 0.3
    (`exp_deyo.sh`, ResNet-50 BN; 0.2 for its "wild" GN/ViT runs). CIFAR: the public harness's
    Adam 1e-3, tau 0.2, batch 200.

    Host syncs (two per batch, inherent to the official algorithm): the shuffled forward runs on
    the S1 samples only, so their BN batch statistics are those of S1 (indexing needs the count),
    and the step is skipped when S2 is empty (a zero-gradient step would still move Adam/momentum).
    The random draws use the input's device generator (the official code draws on the CPU).
    """

    Hparams = DeYOHparams
    PRESETS = {
        "cifar": dict(optimizer="adam", lr=1e-3, plpd_threshold=0.2, lr_rule="fixed"),
        "imagenet": dict(optimizer="sgd", lr=2.5e-4, momentum=0.9, nesterov=False, plpd_threshold=0.3,
                         lr_rule="resnet"),
    }

    def __init__(self, model: nn.Module, hparams: DeYOHparams):
        if hparams.aug_type not in ("patch", "pixel", "occ"):
            raise ConfigError(f"unknown aug_type {hparams.aug_type!r}; valid: patch, pixel, occ")
        super().__init__(model, hparams)

    def configure_model(self) -> None:
        """Train mode, batch-statistics BN, gradients only for the SAR parameter set."""
        train_only(self.model, sar_parameters(self.model))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Norm affine parameters outside layer4 / blocks.9-11 / the final norm (as SAR)."""
        return [p for _, p in sar_parameters(self.model)]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The shape-destroying transform x -> x' of `aug_type`."""
        hp = self.hparams
        if hp.aug_type == "patch":
            return patch_shuffle(x, hp.patch_len)
        if hp.aug_type == "pixel":
            return pixel_shuffle(x)
        return occlude(x, hp.occlusion_size, hp.row_start, hp.column_start)

    def plpd(self, outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Pseudo-label probability difference p[c] - p'[c] (no gradient), c = argmax p."""
        with torch.no_grad():
            probs, probs_prime = outputs.detach().softmax(1), self.model(self.augment(x)).softmax(1)
        cls = probs.argmax(1, keepdim=True)
        return (probs.gather(1, cls) - probs_prime.gather(1, cls)).squeeze(1)

    def loss(self, entropy: torch.Tensor, plpd: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Weighted mean entropy over S2, S2 mask) for the S1 samples' entropies and PLPDs."""
        hp = self.hparams
        selected = plpd > hp.plpd_threshold if hp.filter_plpd else plpd >= -2.0
        if hp.reweight_ent or hp.reweight_plpd:
            e0 = hp.e_margin_scale * math.log(num_classes)
            # 1/exp(.) rather than exp(-.) to round as the official code does.
            coeff = (float(hp.reweight_ent) * (1 / torch.exp(entropy.detach() - e0))
                     + float(hp.reweight_plpd) * (1 / torch.exp(-plpd)))
            entropy = entropy * coeff
        return masked_mean(entropy, selected), selected

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """`steps` DeYO updates on `x`; returns the logits of the last step's forward."""
        for _ in range(self.hparams.steps):
            outputs = self.deyo_step(x)
        return outputs

    def deyo_step(self, x: torch.Tensor) -> torch.Tensor:
        """Entropy filter, PLPD filter on shuffled inputs, weighted entropy step."""
        outputs = self.model(x)
        if self.optimizer is None:
            return outputs.detach()
        set_official_lr(self, x.shape[0])
        self.optimizer.zero_grad()
        num_classes = outputs.shape[1]
        entropy = softmax_entropy(outputs)
        limit = self.hparams.deyo_margin_scale * math.log(num_classes)
        keep = entropy.detach() < limit if self.hparams.filter_ent else entropy.detach() <= math.log(1000)
        index = keep.nonzero().squeeze(1)  # host sync: S1's size
        if index.numel() == 0:
            return outputs.detach()
        plpd = self.plpd(outputs[index], x[index].detach())
        loss, selected = self.loss(entropy[index], plpd, num_classes)
        if bool(selected.any()):  # host sync: no step on an empty S2, as the official code
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad()
        return outputs.detach()
