"""Digital corruptions (brightness, contrast, saturate, elastic, jpeg, pixelate).

Every corruption takes a uint8 batch (N, H, W, 3) and returns values on the 0..255 scale.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv

from .blur import gaussian_batch

BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))
# (alpha, sigma, affine) as fractions of the image size; the original multiplies by IMSIZE = 32.
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
HSV_CHUNK = 128


def _adjust_hsv(x: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    """Clip(hsv[channel] * scale + shift) in skimage's HSV space, returned on the 0..255 scale."""
    out = np.empty(x.shape, dtype=np.float64)
    # skimage's colour conversions are ~4x faster on cache-sized chunks than on the whole batch.
    for start in range(0, x.shape[0], HSV_CHUNK):
        hsv = rgb2hsv(x[start : start + HSV_CHUNK] / 255.0)
        hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
        out[start : start + HSV_CHUNK] = hsv2rgb(hsv)
    return np.clip(out, 0, 1) * 255


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a constant to the HSV value channel."""
    return _adjust_hsv(x, 2, 1.0, BRIGHTNESS[severity - 1])


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation channel."""
    scale, shift = SATURATE[severity - 1]
    return _adjust_hsv(x, 1, scale, shift)


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink every channel towards its per-image mean."""
    c = CONTRAST[severity - 1]
    x = x / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _affine_warp(image: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Warp one float image by the affine map that moves three fixed points by `jitter`."""
    h, w = image.shape[:2]
    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + jitter.astype(np.float32)
    matrix = cv2.getAffineTransform(pts1, pts2)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Random affine warp followed by a smooth random displacement field."""
    n, h, w, ch = x.shape
    alpha, sigma, affine = (v * h for v in ELASTIC[severity - 1])
    x = x.astype(np.float32) / 255.0
    jitter = rng.uniform(-affine, affine, size=(n, 3, 2))
    warped = np.stack([_affine_warp(x[i], jitter[i]) for i in range(n)])
    noise = rng.uniform(-1, 1, size=(2, n, h, w))
    dx = (gaussian_batch(noise[0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian_batch(noise[1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    out = _bilinear_reflect(warped, np.arange(h)[:, None] + dy, np.arange(w)[None, :] + dx)
    return np.clip(out, 0, 1) * 255


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Map integer indices into [0, n) by half-sample symmetric reflection (d c b a | a b c d)."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _bilinear_reflect(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample (N, H, W, C) images at per-image (N, H, W) float coordinates, bilinearly.

    Equals scipy's map_coordinates(order=1, mode='reflect') per image and channel, but gathers
    whole pixels, which is ~4x faster than one 4-D map_coordinates call on the batch.
    """
    n, h, w = images.shape[:3]
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    ra, rb = _reflect_index(r0, h), _reflect_index(r0 + 1, h)
    ca, cb = _reflect_index(c0, w), _reflect_index(c0 + 1, w)
    # Flat pixel indices with np.take are much faster than 3-array fancy indexing.
    pixels = images.reshape(n * h * w, -1)
    base = (np.arange(n) * (h * w))[:, None, None]
    ra, rb = base + ra * w, base + rb * w

    def at(idx: np.ndarray) -> np.ndarray:
        return np.take(pixels, idx, axis=0)

    top = at(ra + ca) * (1 - fc) + at(ra + cb) * fc
    bottom = at(rb + ca) * (1 - fc) + at(rb + cb) * fc
    return top * (1 - fr) + bottom * fr


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Round-trip every image through PIL's JPEG encoder."""
    quality = JPEG_QUALITY[severity - 1]
    out = np.empty_like(x)
    for i, img in enumerate(x):
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer))
    return out


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample by the severity factor and box-upsample back."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[1:3]
    small = (int(w * c), int(h * c))
    out = np.empty_like(x)
    for i, img in enumerate(x):
        out[i] = np.asarray(Image.fromarray(img).resize(small, Image.BOX).resize((w, h), Image.BOX))
    return out
