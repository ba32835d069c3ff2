"""Blur corruptions (gaussian, glass, defocus, motion, zoom) and their shared helpers.

Every corruption takes a uint8 batch (N, H, W, 3) and returns floats on the 0..255 scale.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.ndimage import zoom as scizoom

GAUSSIAN_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
# Built with np.arange exactly as the original, float quirks included (1.06 yields 7 factors).
ZOOM_ENDS = (1.06, 1.11, 1.16, 1.21, 1.26)
# The dense (S^2, S^2) zoom operator is 4 MB at S = 32 but grows as S^4; larger images fall back
# to one scipy zoom per factor.
ZOOM_OPERATOR_MAX_SIZE = 64


# ---------------------------------------------------------------- helpers


def gaussian_batch(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian applied per image of a (N, H, W[, C]) batch."""
    # skimage blurs only the spatial axes of a multichannel image; sigma 0 keeps N and C apart.
    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return gaussian_filter(x, sigma=sigmas, mode=mode, truncate=truncate)


def clipped_zoom(x: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom the centre of every (N, H, W, C) image by `zoom_factor` and crop back to H x W."""
    h = x.shape[1]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    # Zoom factor 1 on the batch axis lands on integer coordinates, so images never mix.
    out = scizoom(x[:, top : top + ch, top : top + ch], (1, zoom_factor, zoom_factor, 1), order=1)
    trim = (out.shape[1] - h) // 2
    return out[:, trim : trim + h, trim : trim + h]


def zoom_matrix(size: int, zoom_factor: float) -> np.ndarray:
    """(size, size) matrix M with M @ column == the 1-D clipped_zoom of that column (linear)."""
    # Same geometry as scipy's zoom(order=1, grid_mode=False) of the centre crop, then the trim.
    ch = int(np.ceil(size / zoom_factor))
    top = (size - ch) // 2
    out_len = int(round(ch * zoom_factor))
    trim = (out_len - size) // 2
    coord = (trim + np.arange(size)) * ((ch - 1) / (out_len - 1))
    i0 = np.minimum(np.floor(coord).astype(np.int64), ch - 2)
    frac = coord - i0
    rows = np.arange(size)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (rows, top + i0), 1 - frac)
    np.add.at(matrix, (rows, top + i0 + 1), frac)
    return matrix


@functools.lru_cache(maxsize=16)
def zoom_operator(size: int, severity: int) -> np.ndarray:
    """(S*S, S*S) float32 matrix mapping a flattened image plane to the sum of its clipped zooms."""
    # clipped_zoom is linear and separable, zoom(X) = M X M^T, i.e. kron(M, M) on the flattened
    # plane; summing the krons turns all zoom factors into one matrix product (~50x faster).
    factors = np.arange(1, ZOOM_ENDS[severity - 1], 0.01)
    operator = sum(np.kron(m, m) for m in (zoom_matrix(size, z) for z in factors))
    operator = operator.astype(np.float32)
    operator.flags.writeable = False
    return operator


def motion_kernel(radius: float, sigma: float, angle: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Correlation kernel and cv2 anchor equivalent to ImageMagick's MotionBlurImage."""
    # ImageMagick: width 2*ceil(radius)+1 taps with one-sided Gaussian weights exp(-i^2 / 2 sigma^2),
    # tap i samples the pixel at (x, y) + i * (cos(angle), sin(angle)) rounded half down.
    width = int(2 * math.ceil(radius) + 1)
    taps = np.arange(width, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    weights /= weights.sum()
    rad = math.radians(angle)
    px, py = width * math.sin(rad), width * math.cos(rad)
    norm = math.hypot(px, py)
    off_x = np.ceil(taps * py / norm - 0.5).astype(np.int64)
    off_y = np.ceil(taps * px / norm - 0.5).astype(np.int64)
    # Only the taps' bounding box is kept, with the anchor moved accordingly: less work for cv2.
    x0, y0 = off_x.min(), off_y.min()
    kernel = np.zeros((off_y.max() - y0 + 1, off_x.max() - x0 + 1), dtype=np.float32)
    np.add.at(kernel, (off_y - y0, off_x - x0), weights)
    return kernel, (int(-x0), int(-y0))


def motion_blur_image(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion-blur one uint8 image (H, W[, C]) and round to uint8 like ImageMagick's PNG output."""
    kernel, anchor = motion_kernel(radius, sigma, angle)
    # ImageMagick's default virtual pixels repeat the edge, i.e. BORDER_REPLICATE.
    out = cv2.filter2D(img, cv2.CV_32F, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased normalised disk kernel used by defocus blur."""
    half = 8 if radius <= 8 else int(radius)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def _glass_shift(x: np.ndarray, delta: int, rng: np.random.Generator) -> np.ndarray:
    """One pass of the original's local pixel 'swap' loop, done for all images at once."""
    n, h, w = x.shape[:3]
    rows = np.arange(delta + 1, h - delta + 1)
    cols = np.arange(delta + 1, w - delta + 1)
    # randint(-delta, delta) excludes +delta (original quirk, kept): offsets are -1 or 0.
    d = rng.integers(-delta, delta, size=(n, rows.size, cols.size, 2))
    src_r = rows[None, :, None] + d[..., 1]
    src_c = cols[None, None, :] + d[..., 0]
    out = x.copy()
    out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = x[np.arange(n)[:, None, None], src_r, src_c]
    return out


# ---------------------------------------------------------------- corruptions


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian blur."""
    return np.clip(gaussian_batch(x / 255.0, GAUSSIAN_SIGMA[severity - 1]), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, locally jitter pixels, blur again (frosted-glass look)."""
    sigma, delta, iterations = GLASS[severity - 1]
    if delta != 1:
        raise NotImplementedError("the vectorised pixel jitter is exact only for max_delta == 1")
    x = np.uint8(gaussian_batch(x / 255.0, sigma) * 255)
    for _ in range(iterations):
        x = _glass_shift(x, delta, rng)
    return np.clip(gaussian_batch(x / 255.0, sigma), 0, 1) * 255


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolve with an anti-aliased disk (out-of-focus lens)."""
    radius, alias_blur = DEFOCUS[severity - 1]
    kernel = disk_kernel(radius, alias_blur)
    x = x / 255.0
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = cv2.filter2D(x[i], -1, kernel)
    return np.clip(out, 0, 1) * 255


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One-sided Gaussian line blur at a random angle in [-45, 45] degrees (ImageMagick substitute)."""
    radius, sigma = MOTION[severity - 1]
    angles = rng.uniform(-45, 45, size=x.shape[0])
    out = np.empty_like(x)
    for i, angle in enumerate(angles):
        out[i] = motion_blur_image(x[i], radius, sigma, float(angle))
    return out.astype(np.float64)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average the image with centre zooms of growing factor (radial blur)."""
    n, size, _, c = x.shape
    factors = np.arange(1, ZOOM_ENDS[severity - 1], 0.01)
    x = (x / 255.0).astype(np.float32)
    if size <= ZOOM_OPERATOR_MAX_SIZE:
        planes = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n * c, size * size)
        out = (planes @ zoom_operator(size, severity).T).reshape(n, c, size, size).transpose(0, 2, 3, 1)
    else:
        out = sum(clipped_zoom(x, zoom_factor) for zoom_factor in factors)
    x = (x + out) / (len(factors) + 1)
    return np.clip(x, 0, 1) * 255
