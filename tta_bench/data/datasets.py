"""The benchmark data sets the harness knows, and how to open each one under a data root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from tta_bench.data.cifar_c import CorruptionFiles, Download
from tta_bench.data.domains import ALL_CORRUPTIONS
from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.errors import ConfigError

Family = Literal["cifar", "imagenet"]
FAMILIES: tuple[str, ...] = ("cifar", "imagenet")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of one benchmark data set."""

    name: str
    folder: str
    num_classes: int
    family: Family
    download: Download | None = None
    layout: Literal["cifar_c", "imagenet_c"] = "cifar_c"  # .npy arrays, or JPEG folders


DATASETS: dict[str, DatasetInfo] = {
    "digits_c": DatasetInfo("digits_c", "digits_c/DIGITS-C", 10, "cifar"),
    "cifar10_c": DatasetInfo(
        "cifar10_c", "CIFAR-10-C", 10, "cifar",
        Download("CIFAR-10-C.tar", "https://zenodo.org/records/2535967",
                 "c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7"),
    ),
    "cifar100_c": DatasetInfo(
        "cifar100_c", "CIFAR-100-C", 100, "cifar",
        Download("CIFAR-100-C.tar", "https://zenodo.org/records/3555552",
                 "30ee6543a1bfd049fa33834b7c1ada301e7064b7fbe8fc38340eb8b62ced4b33"),
    ),
    # Archives per corruption group are named by the reader's error messages.
    "imagenet_c": DatasetInfo("imagenet_c", "ImageNet-C", 1000, "imagenet", layout="imagenet_c"),
}


def dataset_info(name: str) -> DatasetInfo:
    """Facts of a data set by name, with the valid names in the error."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


class Benchmark:
    """An opened corruption benchmark: labels, domain images and (where present) clean splits."""

    def __init__(self, info: DatasetInfo, data_root: Path, corruptions: tuple[str, ...], progress: bool = True,
                 all_images: bool = False, image_list: str | None = None, loader_workers: int = 4):
        self.info = info
        self.data_root = Path(data_root)
        self.loader_workers = loader_workers
        if info.name == "digits_c":
            from tta_bench.data.digits_c import ensure_digits_c

            ensure_digits_c(self.data_root, progress=progress)
        if info.layout == "imagenet_c":
            from tta_bench.data.imagenet_c import ImageNetCFiles

            list_file = Path(image_list) if image_list else None
            self.files = ImageNetCFiles(self.data_root / info.folder, corruptions, list_file, all_images)
        else:
            self.files = CorruptionFiles(self.data_root / info.folder, corruptions, info.download)

    @property
    def streams_from_disk(self) -> bool:
        """JPEG domains are decoded batch by batch instead of being uploaded whole."""
        return self.info.layout == "imagenet_c"

    def stream_batches(self, domains: list[tuple[str, int]], domain_ids: np.ndarray, rows: np.ndarray,
                       batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
        """uint8 NCHW device batches of the given (domain, row) positions, decoded by worker processes."""
        from tta_bench.data.imagenet_c import StreamItems, stream_batches

        items = StreamItems(tuple(domains), domain_ids, rows)
        return stream_batches(self.files, items, batch_size, device, workers=self.loader_workers)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the base test images, shared by every domain (int64, file order)."""
        return self.files.labels

    def load(self, corruption: str, severity: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Images (n, H, W, 3) uint8 of one domain."""
        return self.files.load(corruption, severity, rows)

    def load_clean(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Clean source images and labels of `split` (train/test)."""
        if self.info.name == "digits_c":
            from tta_bench.data.digits_c import load_clean_split

            return load_clean_split(self.data_root, split)
        if self.info.name in ("cifar10_c", "cifar100_c"):
            from tta_bench.data.cifar_clean import load_cifar_clean

            return load_cifar_clean(self.info.name, self.data_root, split)
        from tta_bench.data.imagenet_clean import load_imagenet_clean

        # The test split is the clean counterpart of the corrupted images (the same list).
        relpaths = self.files.relpaths if split == "test" else None
        return load_imagenet_clean(self.data_root, split, self.files.wnids, relpaths)


def open_benchmark(name: str, data_root: Path, corruptions: tuple[str, ...] = ALL_CORRUPTIONS,
                   progress: bool = True, n_examples: int | None = None, image_list: str | None = None,
                   loader_workers: int = 4) -> Benchmark:
    """Open data set `name` under `data_root`, generating the embedded one on first use."""
    unknown = sorted(set(corruptions) - set(ALL_CORRUPTIONS))
    if unknown:
        raise ConfigError(f"unknown corruptions {unknown}; valid: {', '.join(ALL_CORRUPTIONS)}")
    all_images = n_examples is not None and n_examples < 0
    return Benchmark(dataset_info(name), data_root, tuple(corruptions), progress, all_images, image_list,
                     loader_workers)


def load_domain(dataset: str, corruption: str, severity: int, n_examples: int | None = None,
                data_root: str | Path = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (n, 3, H, W) in [0,1] and int64 labels of one domain, in file order."""
    bench = open_benchmark(dataset, Path(data_root), (corruption,))
    n = len(bench.labels) if n_examples is None or n_examples < 0 else min(n_examples, len(bench.labels))
    rows = np.arange(n)
    return as_float(to_nchw(bench.load(corruption, severity, rows))), torch.from_numpy(bench.labels[rows])
