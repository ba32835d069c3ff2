"""Clean ImageNet in the ImageFolder layout, `<data_root>/imagenet/<train|val>/<wnid>/*.JPEG`.

The source data of preparation steps and of the clean forgetting probe for ImageNet-C runs.
Images are preprocessed the way ImageNet-C was made from the validation set: shorter side resized
to 256 (bilinear), centre crop 224, so clean and corrupted images have the same geometry.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tta_bench.errors import DataNotFoundError

FOLDER = "imagenet"
RESIZE, CROP = 256, 224
DEFAULT_LIMIT = 5000  # images held in memory at once; preparation steps need 2,000 (EATA)


def preprocess(path: Path) -> np.ndarray:
    """Decode, resize the shorter side to 256, centre-crop 224; uint8 (224, 224, 3)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = RESIZE / min(img.size)
            img = img.resize((max(RESIZE, round(img.width * scale)), max(RESIZE, round(img.height * scale))),
                             Image.BILINEAR)
            left, top = (img.width - CROP) // 2, (img.height - CROP) // 2
            return np.asarray(img.crop((left, top, left + CROP, top + CROP)), dtype=np.uint8)
    except OSError as exc:
        raise DataNotFoundError(f"cannot decode {path} ({exc}); re-extract it") from exc


def _split_folder(data_root: Path, split: str) -> Path:
    folder = Path(data_root) / FOLDER / ("val" if split == "test" else split)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"missing clean ImageNet {split} data {folder}/ (ImageFolder layout: <wnid>/<file>.JPEG); get "
            "ILSVRC2012 from https://image-net.org/download-images (the validation images sorted into "
            f"wnid folders, as torchvision's ImageNet class does) and place it at {folder}/"
        )
    return folder


def _evenly_spaced(relpaths: list[str], limit: int) -> list[str]:
    """`limit` files spread over the sorted listing, so every class is represented."""
    if len(relpaths) <= limit:
        return relpaths
    return [relpaths[i] for i in np.linspace(0, len(relpaths) - 1, limit).round().astype(int)]


def load_imagenet_clean(data_root: Path, split: str, wnids: list[str], relpaths: list[str] | None = None,
                        limit: int = DEFAULT_LIMIT, workers: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 224, 224, 3) uint8 and int64 labels (index in `wnids`) of clean ImageNet.

    `relpaths` (`wnid/file.JPEG`) selects files, e.g. the RobustBench list for the test split;
    otherwise at most `limit` files spread over the folder are used.
    """
    folder = _split_folder(data_root, split)
    if relpaths is None:
        relpaths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*") if p.suffix.lower() == ".jpeg")
    relpaths = _evenly_spaced(list(relpaths), limit)
    missing = [folder / r for r in relpaths if not (folder / r).is_file()]
    if missing or not relpaths:
        raise DataNotFoundError(f"clean ImageNet {split} data under {folder} lacks {len(missing)} files, e.g. "
                                f"{[str(m) for m in missing[:3]]}" if missing else f"no JPEGs under {folder}")
    index = {w: i for i, w in enumerate(wnids)}
    unknown = sorted({r.split("/")[0] for r in relpaths} - index.keys())
    if unknown:
        raise DataNotFoundError(f"{folder} has class folders that are not ImageNet wnids: {unknown[:5]}")
    # PIL releases the GIL while decoding, so threads overlap the JPEG work.
    with ThreadPoolExecutor(workers) as pool:
        images = np.stack(list(pool.map(preprocess, (folder / r for r in relpaths))))
    labels = np.array([index[r.split("/")[0]] for r in relpaths], dtype=np.int64)
    return images, labels
