"""The CoTTA augmentation pipeline, on the device, with one parameter draw per call.

CoTTA (qinenergy/cotta `get_tta_transforms`) and the public harness (mariodoebler/test-time-
adaptation `augmentations/transforms_cotta.py`, also used by RMT and ROID) apply a torchvision
`Compose` to a whole batch tensor: colour jitter in random order (brightness, contrast, saturation,
hue, gamma), pad by n/2, random affine, Gaussian blur, centre crop, horizontal flip, Gaussian
noise, clamp. Every geometric and colour parameter is drawn once per call and shared by the batch;
only the noise differs per pixel. This module builds the same pipeline from torchvision's tensor
transforms, which run batched on any device, instead of re-implementing the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

PaddingMode = Literal["edge", "reflect", "constant", "symmetric"]


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the CoTTA transform; the defaults are the official strong (non-soft) values."""

    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.06, 0.06)
    gamma: tuple[float, float] = (0.7, 1.3)
    padding_mode: PaddingMode = "edge"
    degrees: tuple[float, float] = (-15.0, 15.0)
    translate: tuple[float, float] = (1 / 16, 1 / 16)
    scale: tuple[float, float] = (0.9, 1.1)
    blur: bool = True  # the harness's cotta_augs=False drops blur and noise
    blur_sigma: tuple[float, float] = (0.001, 0.5)
    flip_p: float = 0.5
    noise_std: float = 0.005


COTTA = AugmentSpec()
COTTA_SOFT = AugmentSpec(brightness=(0.8, 1.2), contrast=(0.85, 1.15), saturation=(0.75, 1.25),
                         hue=(-0.03, 0.03), gamma=(0.85, 1.15), degrees=(-8.0, 8.0), scale=(0.95, 1.05),
                         blur_sigma=(0.001, 0.25))
# ROID (harness, padding_mode="reflect", cotta_augs=False): no blur and no noise.
ROID = AugmentSpec(padding_mode="reflect", blur=False, noise_std=0.0)


def _uniform(low_high: tuple[float, float]) -> float:
    # A host-side draw from torch's generator, as torchvision's own get_params does.
    return float(torch.empty(1).uniform_(*low_high))


def color_jitter(x: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """Brightness, contrast, saturation, hue and gamma with one factor each, in a random order."""
    for op in torch.randperm(5).tolist():
        if op == 0:
            x = TF.adjust_brightness(x, _uniform(spec.brightness))
        elif op == 1:
            x = TF.adjust_contrast(x, _uniform(spec.contrast))
        elif op == 2:
            x = TF.adjust_saturation(x, _uniform(spec.saturation))
        elif op == 3:
            x = TF.adjust_hue(x, _uniform(spec.hue))
        else:  # the official code clamps first: gamma of 0 after contrast gives NaN gradients
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), _uniform(spec.gamma))
    return x


class CoTTAAugment:
    """Callable batch -> augmented batch (NCHW in [0,1], any device), one parameter draw per call."""

    def __init__(self, spec: AugmentSpec = COTTA):
        self.spec = spec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec, (h, w) = self.spec, x.shape[-2:]
        x = color_jitter(x.clamp(0.0, 1.0), spec)
        x = TF.pad(x, [h // 2], padding_mode=spec.padding_mode)
        angle, shift, scale, shear = T.RandomAffine.get_params(list(spec.degrees), list(spec.translate),
                                                               list(spec.scale), None, [x.shape[-1], x.shape[-2]])
        x = TF.affine(x, angle, list(shift), scale, list(shear), interpolation=T.InterpolationMode.BILINEAR, fill=0)
        if spec.blur:
            sigma = _uniform(spec.blur_sigma)
            x = TF.gaussian_blur(x, [5, 5], [sigma, sigma])
        x = TF.center_crop(x, [h, w])
        if torch.rand(1) < spec.flip_p:
            x = TF.hflip(x)
        if spec.noise_std > 0:
            x = x + torch.randn_like(x) * spec.noise_std
        return x.clamp(0.0, 1.0)
