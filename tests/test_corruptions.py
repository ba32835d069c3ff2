"""CIFAR-10-C corruptions: shapes, determinism, severity ordering and argument validation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from tta_bench.data.corruptions import CORRUPTION_FUNCTIONS, corrupt
from tta_bench.data.domains import ALL_CORRUPTIONS, SEVERITIES

# Corruptions whose output does not depend on the random generator.
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "brightness",
    "contrast",
    "saturate",
    "jpeg_compression",
    "pixelate",
}
CASES = [(name, severity) for name in ALL_CORRUPTIONS for severity in SEVERITIES]


def _crops(image: np.ndarray, count: int, size: int, seed: int) -> np.ndarray:
    """Random square crops of `image`, area-resized to size x size."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.integers(96, min(image.shape[:2])))
        top, left = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
        out.append(cv2.resize(image[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """16 real-looking 32x32 RGB images (astronaut and cat crops, shipped offline with skimage)."""
    return np.concatenate([_crops(data.astronaut(), 10, 32, 0), _crops(data.chelsea(), 6, 32, 1)])


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def test_functions_cover_all_corruptions_in_order() -> None:
    assert tuple(CORRUPTION_FUNCTIONS) == ALL_CORRUPTIONS


@pytest.mark.parametrize(("name", "severity"), CASES)
def test_shape_dtype_and_determinism(images: np.ndarray, name: str, severity: int) -> None:
    before = images.copy()
    out = corrupt(images, name, severity, np.random.default_rng(123))
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(images, before)  # input untouched
    again = corrupt(images, name, severity, np.random.default_rng(123))
    np.testing.assert_array_equal(out, again)
    other = corrupt(images, name, severity, np.random.default_rng(456))
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(out, other)
    else:
        assert not np.array_equal(out, other)


# CIFAR elastic severity 1 is a pure affine jitter of up to 2.56 px, which moves pixels further
# than severity 5's small affine plus fine-grained warp: its pixel distance is not monotone.
NOT_MONOTONE_IN_PIXELS = {"elastic_transform"}


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_severity_five_is_stronger_than_one(images: np.ndarray, name: str) -> None:
    mild = _mad(corrupt(images, name, 1, np.random.default_rng(0)), images)
    strong = _mad(corrupt(images, name, 5, np.random.default_rng(0)), images)
    assert mild > 0 and strong > 0
    if name not in NOT_MONOTONE_IN_PIXELS:
        assert strong > mild


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_other_square_size(name: str) -> None:
    images = _crops(data.astronaut(), 2, 48, 2)
    out = corrupt(images, name, 3, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape


def test_empty_batch() -> None:
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    assert corrupt(empty, "fog", 2, np.random.default_rng(0)).shape == empty.shape


@pytest.mark.parametrize("name", ["gaussian", "Fog", "", "clean"])
def test_unknown_name_lists_valid_names(images: np.ndarray, name: str) -> None:
    with pytest.raises(ValueError, match="gaussian_noise.*saturate"):
        corrupt(images, name, 1, np.random.default_rng(0))


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
def test_invalid_severity(images: np.ndarray, severity: object) -> None:
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "contrast", severity, np.random.default_rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 32, 32, 3), np.float32), np.zeros((32, 32, 3), np.uint8), np.zeros((2, 32, 30, 3), np.uint8)],
)
def test_invalid_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        corrupt(bad, "contrast", 1, np.random.default_rng(0))
