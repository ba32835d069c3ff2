"""LAME: Laplacian-regularised maximum-likelihood estimation of the output of a frozen model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tta_bench.methods.base import Hparams, Method
from tta_bench.methods.registry import register_method
from tta_bench.models.split import features_and_logits

Affinity = Literal["rbf", "kNN", "linear"]
PROB_EPS = 1e-10  # unary = -log(p + 1e-10), as the official code
LOG_CLIP = 1e-20  # Y log Y of the energy uses Y clipped to 1e-20, as the official code


@dataclass(frozen=True)
class LAMEHparams(Hparams):
    """Affinity kernel, neighbours, symmetrisation, Laplacian weight and the fixed-point stopping rule."""

    affinity: Affinity = "rbf"
    knn: int = 5  # kNN: neighbours besides self; rbf: sigma from the knn-th distance, self included
    force_symmetry: bool = False  # replace the kernel W by (W + W^T) / 2
    bound_lambda: float = 1.0
    max_steps: int = 100
    tol: float = 1e-8  # stop once |E - E_prev| <= tol * |E_prev| (from the third iteration on)


def pairwise_distances(feats: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, computed from differences (exact zeros on the diagonal)."""
    return torch.cdist(feats, feats, compute_mode="donot_use_mm_for_euclid_dist")


def affinity_matrix(feats: torch.Tensor, kind: Affinity, knn: int) -> torch.Tensor:
    """The [N, N] kernel W over L2-normalised features `feats`, not symmetrised (as the official code)."""
    n = feats.shape[0]
    if kind == "linear":
        return feats @ feats.t()
    dist = pairwise_distances(feats)
    if kind == "kNN":
        # the nearest (knn + 1) include the point itself, which the official code drops as column 0
        index = dist.topk(min(knn + 1, n), dim=-1, largest=False).indices[:, 1:]
        return torch.zeros(n, n, dtype=feats.dtype, device=feats.device).scatter_(1, index, 1.0)
    if kind == "rbf":
        # sigma = mean over points of the distance to the knn-th nearest point, the point itself included
        sigma = dist.topk(min(knn, n), dim=-1, largest=False).values[:, -1].mean()
        # Guard for sigma = 0 (one image, or coinciding features), where the official code gives NaN.
        return torch.exp(-dist**2 / (2 * sigma**2).clamp_min(torch.finfo(feats.dtype).tiny))
    raise ValueError(f"unknown LAME affinity {kind!r}; valid: rbf, kNN, linear")


def entropy_energy(y: torch.Tensor, unary: torch.Tensor, pairwise: torch.Tensor, bound_lambda: float) -> torch.Tensor:
    """Official energy sum(u Y - lambda (lambda W Y_prev) Y + Y log Y); lambda enters twice as in the code."""
    return (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clip(LOG_CLIP))).sum()


def laplacian_optimization(unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0,
                           max_steps: int = 100, tol: float = 1e-8) -> torch.Tensor:
    """Fixed point Y = softmax(-u + lambda W Y) from Y = softmax(-u), with the official stopping rule.

    The official loop reads the energy on the host each iteration and breaks once its relative
    change is <= tol (checked from the third iteration, i > 1). Here all `max_steps` iterations run
    on the device and the state is frozen with `torch.where` once converged, which returns the same
    Y without a host sync. The test is done in float64 like the official Python-float comparison.
    """
    y = (-unary).softmax(-1)
    old_energy = torch.full((), float("inf"), dtype=torch.float64, device=unary.device)
    done = torch.zeros((), dtype=torch.bool, device=unary.device)
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        new_y = (-unary + pairwise).softmax(-1)
        energy = entropy_energy(new_y, unary, pairwise, bound_lambda).double()
        converged = (energy - old_energy).abs() <= tol * old_energy.abs() if i > 1 else torch.zeros_like(done)
        y = torch.where(done, y, new_y)
        old_energy = torch.where(done | converged, old_energy, energy)
        done = done | converged
    return y


@register_method("lame")
class LAME(Method):
    """Correct the frozen model's probabilities with a Laplacian over the batch's feature affinities.

    Paper: Boudiaf et al., "Parameter-free Online Test-time Adaptation" (CVPR 2022).
    Official code: fiveai/LAME (`src/adaptation/lame.py`, `src/config/defaults.py`,
    `configs/method/best/LAME/overall_best.yaml`); re-hosted unchanged in the public harness
    (mariodoebler/test-time-adaptation `classification/methods/lame.py`, `conf.py`).
    The model stays in eval mode (source BN statistics) and nothing is trained. For a batch:
    p = softmax(logits), unary u = -log(p + 1e-10), penultimate features L2-normalised, kernel W
    (rbf by default: sigma = mean distance to the 5th nearest point, self included;
    W = exp(-D^2 / (2 sigma^2)), self-affinity 1 kept, not symmetrised), then
    `laplacian_optimization`. Returns probabilities. Defaults (rbf, knn 5, no symmetry, lambda 1,
    100 steps, tol 1e-8) are the same for CIFAR- and ImageNet-like benchmarks in both repositories.
    The official LAME_SIGMA setting is not read by any official kernel, so it has no field here.

    Deviations: no host sync per iteration (all `max_steps` iterations run, converged state frozen
    on the device: same output); for rbf, 2 sigma^2 is clamped to the smallest positive float so
    a batch with sigma = 0 (one image, or all k-th neighbours coinciding) gets a finite kernel
    instead of the official NaN output.
    """

    Hparams = LAMEHparams
    PRESETS = {"cifar": {}, "imagenet": {}}
    returns_probabilities = True

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """LAME probabilities of batch `x` (the method has no state, so this is also the adaptation)."""
        hp = self.hparams
        feats, logits = features_and_logits(self.model, x)
        unary = -torch.log(logits.softmax(1) + PROB_EPS)
        kernel = affinity_matrix(F.normalize(feats, p=2, dim=-1), hp.affinity, hp.knn)
        if hp.force_symmetry:
            kernel = 0.5 * (kernel + kernel.t())
        return laplacian_optimization(unary, kernel, hp.bound_lambda, hp.max_steps, hp.tol)
