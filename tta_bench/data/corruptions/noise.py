"""Additive and multiplicative pixel noise (gaussian, shot, impulse, speckle).

Every function takes a uint8 batch (N, H, W, 3) and returns floats on the 0..255 scale.
"""

from __future__ import annotations

import numpy as np

GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_LAMBDA = (500, 250, 100, 75, 50)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_SIGMA = (0.06, 0.1, 0.12, 0.16, 0.2)


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise to every channel value."""
    c = GAUSSIAN_SIGMA[severity - 1]
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Replace each value by a Poisson photon count with `lambda` photons at full scale."""
    c = SHOT_LAMBDA[severity - 1]
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise, per channel value, like skimage's random_noise(mode='s&p')."""
    amount = IMPULSE_AMOUNT[severity - 1]
    x = x / 255.0
    # skimage flips each element with probability `amount`, half of them to 1 and half to 0.
    flipped = rng.random(x.shape) < amount
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return np.clip(x, 0, 1) * 255


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gaussian noise: x + x * n."""
    c = SPECKLE_SIGMA[severity - 1]
    x = x / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255
