"""The embedded benchmark digits_c: generated offline from data that installed packages ship.

Base images follow the MNIST-M recipe: a scikit-learn digit (8x8, upsampled, slightly jittered)
blended as |background - 255*digit| over a random crop of a scikit-image photo. The test split is
then corrupted with the 19 CIFAR-10-C corruptions at the CIFAR parameters and written in exactly
the CIFAR-10-C layout, so the real CIFAR-C reader is the code path that reads it.
Generation uses a fixed seed, independent of any run seed: every machine gets the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from tta_bench.data.cifar_c import write_corruption_files
from tta_bench.data.domains import ALL_CORRUPTIONS, SEVERITIES
from tta_bench.progress import progress_bar

GENERATOR_VERSION = 1  # bump when generation or source-model training changes (invalidates caches)
GENERATION_SEED = 2024
N_TEST = 2000
N_TRAIN = 8000
IMAGE_SIZE = 32
GLYPH = 13  # side of the upsampled 8x8 digit, in pixels
CROP_SIZES = (8, 24)  # side of the photo crop that is resized to the background
AMPLITUDE = (0.7, 1.0)  # contrast of the digit against its background
# Photos that scikit-image ships inside its wheel (others need a download and must not be used).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "cat", "stereo_motorcycle")
CORRUPTED_DIR = "DIGITS-C"
CLEAN_DIR = "clean"


def digits_c_folder(data_root: Path) -> Path:
    """Folder that holds the generated benchmark under `data_root`."""
    return Path(data_root) / "digits_c"


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def _render(digits: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """MNIST-M style blend of digit images (n, 8, 8) in [0,1] over random photo crops."""
    out = np.empty((len(digits), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    half = GLYPH / 2
    for i, digit in enumerate(digits):
        glyph = cv2.resize(digit, (GLYPH, GLYPH), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        # Small affine jitter so repeated draws of one digit are distinct images.
        angle, scale = rng.uniform(-12, 12), rng.uniform(0.9, 1.1)
        shift = rng.uniform(-2, 2, size=2)
        m = cv2.getRotationMatrix2D((half, half), angle, scale)
        m[:, 2] += (IMAGE_SIZE / 2 - half + shift[0], IMAGE_SIZE / 2 - half + shift[1])
        glyph = cv2.warpAffine(glyph, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
        photo = photos[rng.integers(len(photos))]
        size = int(rng.integers(CROP_SIZES[0], CROP_SIZES[1] + 1))
        r0, c0 = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        # Upsampled small crops give smooth backgrounds, so high-frequency corruptions are a real shift.
        patch = cv2.resize(photo[r0 : r0 + size, c0 : c0 + size], (IMAGE_SIZE, IMAGE_SIZE),
                           interpolation=cv2.INTER_CUBIC).astype(np.float32)
        amplitude = rng.uniform(*AMPLITUDE)
        out[i] = np.abs(patch - amplitude * 255.0 * glyph[..., None]).clip(0, 255).astype(np.uint8)
    return out


def make_clean_splits(seed: int = GENERATION_SEED) -> dict[str, np.ndarray]:
    """Clean train/test images and labels; test digits are never seen in training."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    images, targets = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    perm = rng.permutation(len(images))
    test_pool, train_pool = perm[:600], perm[600:]
    photos = _photos()
    split = {}
    for name, pool, n in (("train", train_pool, N_TRAIN), ("test", test_pool, N_TEST)):
        picks = rng.choice(pool, n)
        split[f"{name}_images"] = _render(images[picks], photos, rng)
        split[f"{name}_labels"] = targets[picks]
    return split


def _corrupt_all(test_images: np.ndarray, progress: bool) -> dict[str, np.ndarray]:
    from tta_bench.data.corruptions import corrupt

    arrays = {}
    for k, name in enumerate(progress_bar(progress, iterable=ALL_CORRUPTIONS, desc="digits_c: corrupting")):
        blocks = []
        for severity in SEVERITIES:
            # One generator per domain: any domain can be regenerated alone, identically.
            rng = np.random.default_rng([GENERATION_SEED, k, severity])
            blocks.append(corrupt(test_images, name, severity, rng))
        arrays[name] = np.concatenate(blocks)
    return arrays


def _is_complete(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("version") == GENERATOR_VERSION


def ensure_digits_c(data_root: Path, progress: bool = True) -> Path:
    """Generate digits_c under `data_root` unless a complete copy of this version is there."""
    folder = digits_c_folder(data_root)
    if _is_complete(folder):
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    splits = make_clean_splits()
    (tmp / CLEAN_DIR).mkdir(parents=True)
    for key, arr in splits.items():
        np.save(tmp / CLEAN_DIR / f"{key}.npy", arr, allow_pickle=False)
    arrays = _corrupt_all(splits["test_images"], progress)
    write_corruption_files(tmp / CORRUPTED_DIR, arrays, splits["test_labels"])
    meta = {"version": GENERATOR_VERSION, "seed": GENERATION_SEED, "n_test": N_TEST, "n_train": N_TRAIN}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    # The folder appears complete or not at all. If a concurrent job finished first, keep its
    # copy (it may be reading it) and drop ours; only a stale older version is replaced.
    if _is_complete(folder):
        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_clean_split(data_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Clean `train` or `test` images (n, 32, 32, 3) uint8 and int64 labels of digits_c."""
    folder = ensure_digits_c(data_root) / CLEAN_DIR
    images = np.load(folder / f"{split}_images.npy", allow_pickle=False)
    labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False).astype(np.int64)
    return images, labels
