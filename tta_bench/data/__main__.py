"""`python -m tta_bench.data verify [dataset ...] [--data-root data]`: check the files on disk.

Checks what the readers rely on: every corruption file of the CIFAR-C layout has dtype uint8,
shape (5*N, H, W, 3) with N from labels.npy, a file size that matches its header (no truncated
download), and labels in range; ImageNet-C has every corruption/severity folder with the same
number of JPEGs in the same class folders. Prints one line per problem and exits 1 if any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tta_bench.data.datasets import DATASETS, DatasetInfo
from tta_bench.data.domains import ALL_CORRUPTIONS, SEVERITIES


def _npy_problems(path: Path, rows: int | None) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing"]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        return [f"{path}: unreadable or truncated ({exc})"]
    problems = []
    if arr.dtype != np.uint8:
        problems.append(f"{path}: dtype {arr.dtype}, expected uint8")
    if rows is not None and (arr.ndim != 4 or arr.shape[0] != rows or arr.shape[3] != 3):
        problems.append(f"{path}: shape {arr.shape}, expected ({rows}, H, W, 3)")
    return problems


def verify_cifar_c(info: DatasetInfo, data_root: Path) -> list[str]:
    """Problems of a CIFAR-C-layout folder (empty list when it is sound)."""
    folder = data_root / info.folder
    problems = _npy_problems(folder / "labels.npy", None)
    if problems:
        return problems
    labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
    if labels.ndim != 1 or len(labels) % len(SEVERITIES):
        return [f"{folder / 'labels.npy'}: shape {labels.shape}, expected (5*N,)"]
    if labels.max() >= info.num_classes:
        problems.append(f"{folder / 'labels.npy'}: label {labels.max()} >= {info.num_classes} classes")
    for c in ALL_CORRUPTIONS:
        problems += _npy_problems(folder / f"{c}.npy", len(labels))
    return problems


def verify_imagenet_c(info: DatasetInfo, data_root: Path) -> list[str]:
    """Problems of an ImageNet-C folder tree."""
    folder, reference, problems = data_root / info.folder, None, []
    for c in ALL_CORRUPTIONS:
        for s in SEVERITIES:
            d = folder / c / str(s)
            if not d.is_dir():
                problems.append(f"{d}: missing")
                continue
            files = sorted(p.relative_to(d).as_posix() for p in d.glob("*/*.JPEG"))
            if reference is None:
                reference = files
                n_classes = len({f.split("/")[0] for f in files})
                if n_classes != info.num_classes:
                    problems.append(f"{d}: {n_classes} class folders, expected {info.num_classes}")
            elif files != reference:
                problems.append(f"{d}: {len(files)} images, differs from the first domain's {len(reference)}")
    return problems


def main() -> int:
    """Verify the named data sets (default: those present under the data root)."""
    parser = argparse.ArgumentParser(prog="python -m tta_bench.data", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["verify"])
    parser.add_argument("datasets", nargs="*", choices=[[]] + sorted(DATASETS), default=[])
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    args = parser.parse_args()
    names = args.datasets or [n for n, i in DATASETS.items() if (args.data_root / i.folder).exists()]
    if not names:
        print(f"no data set found under {args.data_root}; see scripts/download_data.py", file=sys.stderr)
        return 1
    failed = False
    for name in names:
        info = DATASETS[name]
        check = verify_imagenet_c if info.layout == "imagenet_c" else verify_cifar_c
        problems = check(info, args.data_root)
        print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'} ({args.data_root / info.folder})")
        for p in problems:
            print(f"  {p}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
