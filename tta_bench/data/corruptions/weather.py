"""Weather corruptions (snow, frost, fog, spatter), the plasma fractal and procedural frost textures.

Every corruption takes a uint8 batch (N, H, W, 3) and returns floats on the 0..255 scale.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from .blur import clipped_zoom, gaussian_batch, motion_blur_image

SNOW = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
SPATTER = (
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
)
# cv2.COLOR_RGB2GRAY weights, which the original applies to the float image.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
WATER_RGB = np.array([175, 238, 238], dtype=np.float32) / 255.0  # pale turquoise
MUD_RGB = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown
SPATTER_KERNEL = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)

FROST_TEXTURE_COUNT = 6
FROST_TEXTURE_SIZE = 256
FROST_TEXTURE_SEED = 20190328
FROST_TINT = np.array([0.82, 0.92, 1.0])  # icy blue-white


# ---------------------------------------------------------------- plasma fractal


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square heightmaps, (n, mapsize, mapsize) in [0, 1]; mapsize a power of two."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    maps = np.empty((n, mapsize, mapsize), dtype=np.float64)
    maps[:, 0, 0] = 0
    step, wibble = mapsize, 100.0

    def wibbled_mean(acc: np.ndarray) -> np.ndarray:
        # The original scales the uniform range by wibble twice; kept.
        return acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        acc = corners + np.roll(corners, -1, axis=1)
        acc += np.roll(acc, -1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(acc)
        dr, ul = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        left = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=2))
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = (dr + np.roll(dr, 1, axis=2)) + (ul + np.roll(ul, -1, axis=1))
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


# ---------------------------------------------------------------- frost textures


def _draw_dendrite(canvas: np.ndarray, rng: np.random.Generator, start: tuple[float, float], length: float) -> None:
    """Draw one fern-like ice crystal: a wavy stem with side branches, two levels deep."""
    stack = [(start[0], start[1], rng.uniform(0, 2 * math.pi), length, 2)]
    while stack:
        x, y, angle, seg_len, depth = stack.pop()
        level = 255 * (0.55 + 0.45 * rng.random()) * (0.8 ** (2 - depth))
        n_sub = max(2, int(seg_len / 4))
        for _ in range(n_sub):
            angle += rng.normal(0, 0.12)
            nx, ny = x + seg_len / n_sub * math.cos(angle), y + seg_len / n_sub * math.sin(angle)
            # shift=4 gives sub-pixel endpoints so thin strokes stay smooth.
            p0, p1 = (int(x * 16), int(y * 16)), (int(nx * 16), int(ny * 16))
            cv2.line(canvas, p0, p1, float(level), 1, cv2.LINE_AA, 4)
            if depth > 0 and rng.random() < 0.6:
                side = rng.choice((-1.0, 1.0)) * rng.uniform(0.8, 1.3)
                stack.append((nx, ny, angle + side, seg_len * rng.uniform(0.25, 0.5), depth - 1))
            x, y = nx, ny


def _frost_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One procedural frost image (size, size, 3) uint8 RGB: ice crystals over a cloudy film."""
    noise = rng.standard_normal((3, size, size))
    # Blurring white noise by sigma s shrinks its std by ~1/s; the factor s evens the octaves out.
    octaves = ((1.0, 0.3), (4.0, 1.0), (12.0, 1.5))
    field = sum(wt * s * gaussian_filter(noise[i], s, mode="wrap") for i, (s, wt) in enumerate(octaves))
    field = (field - field.min()) / (field.max() - field.min())
    strokes = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(60 * (size / 256) ** 2)):
        _draw_dendrite(strokes, rng, tuple(rng.uniform(0, size, 2)), rng.uniform(25, 70))
    lines = strokes.astype(np.float64) / 255
    ice = 0.25 + 0.4 * field**1.2 + 0.8 * gaussian_filter(lines, 0.5) + 0.5 * gaussian_filter(lines, 2.0)
    rgb = np.clip(ice, 0, 1)[..., None] * FROST_TINT
    return (rgb * 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def frost_textures(size: int = FROST_TEXTURE_SIZE) -> np.ndarray:
    """The fixed, seeded set of procedural frost textures, (6, size, size, 3) uint8, cached."""
    rng = np.random.default_rng(FROST_TEXTURE_SEED)
    textures = np.stack([_frost_texture(rng, size) for _ in range(FROST_TEXTURE_COUNT)])
    textures.flags.writeable = False
    return textures


# ---------------------------------------------------------------- corruptions


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma-fractal haze and rescale so the brightest value is kept."""
    strength, decay = FOG[severity - 1]
    n, h, w = x.shape[:3]
    x = x / 255.0
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    mapsize = max(32, 1 << (max(h, w) - 1).bit_length())
    x += strength * plasma_fractal(n, mapsize, decay, rng)[:, :h, :w, None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend with a random crop of a procedural frost texture."""
    img_w, frost_w = FROST[severity - 1]
    n, h, w = x.shape[:3]
    textures = frost_textures(max(FROST_TEXTURE_SIZE, 2 * max(h, w)))
    idx = rng.integers(0, textures.shape[0], size=n)
    # Upper bounds exclusive, as the original's randint(0, size - 32).
    top = rng.integers(0, textures.shape[1] - h, size=n)
    left = rng.integers(0, textures.shape[2] - w, size=n)
    rows = top[:, None, None] + np.arange(h)[None, :, None]
    cols = left[:, None, None] + np.arange(w)[None, None, :]
    patches = textures[idx[:, None, None], rows, cols]
    return np.clip(img_w * x.astype(np.float64) + frost_w * patches, 0, 255)


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add motion-blurred snowflakes (and their 180-degree rotation) over a whitened image."""
    loc, scale, zoom, thresh, radius, sigma, keep = SNOW[severity - 1]
    n, h, w = x.shape[:3]
    x = x.astype(np.float32) / 255.0
    layer = rng.normal(size=(n, h, w), loc=loc, scale=scale)
    layer = clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < thresh] = 0
    # The original round-trips the layer through an 8-bit PNG before and after ImageMagick.
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    angles = rng.uniform(-135, -45, size=n)
    flakes = np.stack([motion_blur_image(layer[i], radius, sigma, float(a)) for i, a in enumerate(angles)])
    flakes = (flakes / 255.0)[..., None]
    gray = (x @ GRAY_WEIGHTS)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + flakes + flakes[:, ::-1, ::-1], 0, 1) * 255


def _water_mask(liquid: np.ndarray) -> np.ndarray:
    """Shaded water-drop intensity for one thresholded liquid layer (H, W) in [0, 1]."""
    # The original casts without clipping (a wrap-around for the rare values > 1); we clip.
    liquid = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    dist = cv2.filter2D(dist, cv2.CV_8U, SPATTER_KERNEL)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = liquid * dist
    peak = m.max()
    # An empty layer would divide 0 by 0 in the original (NaN); no drops is the sane reading.
    return m / peak if peak > 0 else m


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (severities 1-3) or mud splashes (4-5) from a thresholded blurred noise layer."""
    loc, scale, sigma, thresh, intensity, mud = SPATTER[severity - 1]
    n, h, w = x.shape[:3]
    x = x.astype(np.float32) / 255.0
    liquid = gaussian_batch(rng.normal(size=(n, h, w), loc=loc, scale=scale), sigma)
    liquid[liquid < thresh] = 0
    if not mud:
        m = np.stack([_water_mask(layer) for layer in liquid]) * intensity
        return np.clip(x + m[..., None] * WATER_RGB, 0, 1) * 255
    m = gaussian_batch(np.where(liquid > thresh, 1, 0).astype(np.float32), intensity)
    m[m < 0.8] = 0
    m = m[..., None]
    return np.clip(x * (1 - m) + MUD_RGB * m, 0, 1) * 255
