"""Reader for the ImageNet-C folder of JPEGs, with a streaming loader that decodes in worker processes.

Layout (Hendrycks & Dietterich, Zenodo record 2235448):
`<folder>/<corruption>/<severity 1-5>/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`, already 224x224
(no resize here; the reader does not assume a size). A row is one base test image
`wnid/ILSVRC2012_val_XXXXXXXX.JPEG`; the rows are RobustBench's 5,000-image list by default or
every file of a domain folder (all 50,000). Class index = position of the wnid in the sorted
wnid folders. A domain is only checked when first used, so opening the benchmark stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from tta_bench.data.domains import SEVERITIES
from tta_bench.errors import ConfigError, DataNotFoundError
from tta_bench.signals import ignore_stop_signals

ZENODO_URL = "https://zenodo.org/records/2235448"
ARCHIVES: dict[str, tuple[str, ...]] = {
    "noise.tar": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur.tar": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather.tar": ("snow", "frost", "fog", "brightness"),
    "digital.tar": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra.tar": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
ARCHIVE_OF: dict[str, str] = {c: a for a, cs in ARCHIVES.items() for c in cs}
CLASS_MAP_IN_PACKAGE = "helper_files/imagenet_class_to_id_map.json"
LIST_IN_PACKAGE = Path("helper_files") / "imagenet_test_image_ids.txt"
MAX_LISTED = 6  # paths named in a message before "... and N more"


def _archive_hint(corruptions: Sequence[str], folder: Path) -> list[str]:
    archives = sorted({ARCHIVE_OF.get(c, "?") for c in corruptions} - {"?"})
    if not archives:
        return []
    return [f"download {', '.join(archives)} from {ZENODO_URL}",
            f"and unpack so that {folder}/<corruption>/<severity>/<wnid>/*.JPEG exist"]


def _corruption_of(path: Path, folder: Path) -> str:
    return path.relative_to(folder).parts[0] if path.is_relative_to(folder) and path != folder else "?"


def _missing_message(paths: Sequence[Path], folder: Path) -> str:
    lines = ["missing ImageNet-C files:"] + [f"  {p}" for p in paths[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        lines.append(f"  ... and {len(paths) - MAX_LISTED} more")
    return "\n".join(lines + _archive_hint([_corruption_of(p, folder) for p in paths], folder))


def _unreadable_message(path: Path, why: str, folder: Path) -> str:
    return "\n".join([f"{path} is not a readable JPEG ({why}); re-download it"]
                     + _archive_hint([_corruption_of(path, folder)], folder))


def _missing_domain_folders(folder: Path, corruptions: Sequence[str]) -> list[Path]:
    """Absent corruption folders, or their absent severity folders when the corruption folder exists."""
    missing = []
    for c in corruptions:
        if not (folder / c).is_dir():
            missing.append(folder / c)
        else:
            missing += [folder / c / str(s) for s in SEVERITIES if not (folder / c / str(s)).is_dir()]
    return missing


def _robustbench_helper_file(relative: str) -> tuple[Path | None, str]:
    """A file shipped in robustbench's package, found without importing robustbench."""
    # Importing robustbench is slow and breaks on current setuptools (specs/data.md); the spec
    # of a top-level package is found without executing it.
    try:
        spec = importlib.util.find_spec("robustbench")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate, ""
    return None, "is not installed" if spec is None else f"has no {relative}"


def robustbench_list_file() -> Path:
    """RobustBench's 5,000-image ImageNet list, found without importing robustbench."""
    path, why = _robustbench_helper_file(LIST_IN_PACKAGE)
    if path is None:
        raise DataNotFoundError(
            f"the default ImageNet-C subset is RobustBench's image list, but robustbench {why}; "
            "`pip install robustbench` or pass the path of imagenet_test_image_ids.txt "
            "(lines `wnid/ILSVRC2012_val_XXXXXXXX.JPEG`)"
        )
    return path


def canonical_wnids() -> list[str] | None:
    """The 1000 ImageNet wnids in class-index order (RobustBench's map), or None if not installed."""
    path, _ = _robustbench_helper_file(CLASS_MAP_IN_PACKAGE)
    if path is None:
        return None
    index = json.loads(path.read_text())
    return sorted(index, key=index.__getitem__)


def read_list_file(path: Path) -> list[str]:
    """Relative paths `wnid/file.JPEG` of a RobustBench-style list, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"ImageNet image list {path} does not exist")
    relpaths = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [r for r in relpaths if len(r.split("/")) != 2]
    if bad or not relpaths:
        raise DataNotFoundError(f"{path}: expected lines `wnid/ILSVRC2012_val_XXXXXXXX.JPEG`, got {bad[:3] or 'none'}")
    return relpaths


def _list_domain(domain: Path) -> tuple[list[str], list[str]]:
    """(sorted wnid folders, sorted relative paths of every JPEG) of one domain folder."""
    wnids = sorted(e.name for e in os.scandir(domain) if e.is_dir())
    # Only JPEGs, so stray files (.DS_Store, partial downloads) do not become rows.
    relpaths = [f"{w}/{name}" for w in wnids for name in sorted(os.listdir(domain / w))
                if name.lower().endswith(".jpeg")]
    return wnids, relpaths


def decode_jpeg(path: Path, folder: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of one image file; unreadable files raise DataNotFoundError."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataNotFoundError(_unreadable_message(path, str(exc), folder)) from exc


def _stack(paths: Sequence[Path], images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack one batch, naming the first file whose size differs from the batch's first image."""
    for p, img in zip(paths, images):
        if img.shape != images[0].shape:
            raise DataNotFoundError(
                f"{p} has size {img.shape[1]}x{img.shape[0]} but {paths[0]} has "
                f"{images[0].shape[1]}x{images[0].shape[0]}; ImageNet-C images all have one size "
                "(a file from another data set?)"
            )
    return np.stack(images)


class ImageNetCFiles:
    """Index of an ImageNet-C folder for a fixed list of base test images (rows)."""

    def __init__(self, folder: Path, corruptions: tuple[str, ...], list_file: Path | None = None,
                 all_images: bool = False, num_classes: int | None = None):
        self.folder = Path(folder)
        self.corruptions = tuple(corruptions)
        if not self.corruptions:
            raise ConfigError("ImageNetCFiles needs at least one corruption")
        missing = _missing_domain_folders(self.folder, self.corruptions)
        if missing:
            raise DataNotFoundError(_missing_message(missing, self.folder))
        first = self.folder / self.corruptions[0] / str(SEVERITIES[0])
        # Labels come from the wnid folders, not the list: RobustBench's list covers 997 classes.
        folder_wnids, listing = _list_domain(first)
        # Class index = position in the sorted 1000 wnids; a partial tree (or a test fixture)
        # must not shift the indices, so the canonical list is used when robustbench ships it.
        self.wnids = canonical_wnids() or folder_wnids
        if num_classes is not None and len(self.wnids) != num_classes:
            raise DataNotFoundError(
                f"{first} holds {len(self.wnids)} class folders, expected {num_classes} "
                "(incompletely unpacked?); class indices would be wrong"
            )
        self.all_images = all_images
        if all_images:
            self.relpaths: list[str] = listing
            self._checked = {(self.corruptions[0], SEVERITIES[0])}
        else:
            self.relpaths = read_list_file(list_file if list_file is not None else robustbench_list_file())
            self._checked = set()
        index = {w: i for i, w in enumerate(self.wnids)}
        unknown = sorted({r.split("/")[0] for r in self.relpaths} - index.keys())
        if unknown:
            raise DataNotFoundError(_missing_message([first / w for w in unknown], self.folder))
        self.labels: np.ndarray = np.array([index[r.split("/")[0]] for r in self.relpaths], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.relpaths)

    def domain_folder(self, corruption: str, severity: int) -> Path:
        """Folder of one (corruption, severity) domain."""
        if severity not in SEVERITIES:
            raise DataNotFoundError(f"severity must be one of {SEVERITIES}, got {severity}")
        return self.folder / corruption / str(severity)

    def path(self, corruption: str, severity: int, row: int) -> Path:
        """File of base image `row` in one domain."""
        return self.domain_folder(corruption, severity) / self.relpaths[row]

    def check_domain(self, corruption: str, severity: int) -> None:
        """Raise DataNotFoundError if the domain folder is missing or (all-images mode) incomplete; once per domain."""
        if (corruption, severity) in self._checked:
            return
        domain = self.domain_folder(corruption, severity)
        if not domain.is_dir():
            raise DataNotFoundError(_missing_message([domain], self.folder))
        # List mode checks only the files a run needs (check_items); all-images rows were listed
        # from the first domain, so every domain must list the same files.
        if self.all_images:
            found = set(_list_domain(domain)[1])
            missing = [domain / r for r in self.relpaths if r not in found]
            if missing:
                raise DataNotFoundError(_missing_message(missing, self.folder))
            extra = sorted(found.difference(self.relpaths))
            if extra:
                first = self.folder / self.corruptions[0] / str(SEVERITIES[0])
                raise DataNotFoundError(
                    f"{domain} holds files that {first} lacks, e.g. {extra[:3]}; "
                    f"{first} looks incomplete\n" + "\n".join(_archive_hint([self.corruptions[0]], self.folder))
                )
        self._checked.add((corruption, severity))

    def check_items(self, items: "StreamItems") -> None:
        """Raise DataNotFoundError naming every file of `items` that is missing, before any is read."""
        for d in np.unique(items.domain_ids):
            self.check_domain(*items.domains[d])
        paths = (self.path(*items.domains[d], int(r)) for d, r in zip(items.domain_ids, items.rows))
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataNotFoundError(_missing_message(missing, self.folder))

    def load(self, corruption: str, severity: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Images (n, H, W, 3) uint8 of one domain in `rows` order, decoded here (small sets only)."""
        self.check_domain(corruption, severity)
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        paths = [self.path(corruption, severity, int(r)) for r in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataNotFoundError(_missing_message(missing, self.folder))
        if not paths:
            raise DataNotFoundError(f"no rows requested from {corruption}@{severity}")
        return _stack(paths, [decode_jpeg(p, self.folder) for p in paths])


@dataclass(frozen=True)
class StreamItems:
    """Stream positions as arrays: a table of (corruption, severity) domains, and per position its domain and row."""

    domains: tuple[tuple[str, int], ...]
    domain_ids: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        if len(self.domain_ids) != len(self.rows):
            raise ValueError(f"{len(self.domain_ids)} domain ids but {len(self.rows)} rows")

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def from_tuples(cls, items: Sequence[tuple[str, int, int]]) -> StreamItems:
        """Convert (corruption, severity, row) tuples."""
        table: dict[tuple[str, int], int] = {}
        ids = [table.setdefault((c, int(s)), len(table)) for c, s, _ in items]
        rows = [int(r) for _, _, r in items]
        return cls(tuple(table), np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.int64))


class _FailedBatch:
    """A batch that could not be decoded; carried back from a worker so the main process raises a clean error."""

    def __init__(self, message: str):
        self.message = message


class _JpegDataset(Dataset):
    """Map-style dataset over stream positions; only paths and indices are sent to the workers."""

    def __init__(self, files: ImageNetCFiles, items: StreamItems):
        self.folder = files.folder
        self.relpaths = files.relpaths
        self.domains = items.domains
        self.domain_ids = items.domain_ids
        self.rows = items.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Path, np.ndarray | str]:
        corruption, severity = self.domains[self.domain_ids[i]]
        path = self.folder / corruption / str(severity) / self.relpaths[self.rows[i]]
        try:
            return path, decode_jpeg(path, self.folder)
        except DataNotFoundError as exc:
            return path, str(exc)


def _collate(samples: list[tuple[Path, np.ndarray | str]]) -> torch.Tensor | _FailedBatch:
    """Decoded samples -> contiguous uint8 NCHW tensor, or the failure to report."""
    # Errors travel as values: DataLoader would re-raise them wrapped in a worker traceback.
    for _, img in samples:
        if isinstance(img, str):
            return _FailedBatch(img)
    try:
        batch = _stack([p for p, _ in samples], [img for _, img in samples])
    except DataNotFoundError as exc:
        return _FailedBatch(str(exc))
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def _to_device(batch: torch.Tensor | _FailedBatch, device: torch.device) -> torch.Tensor:
    if isinstance(batch, _FailedBatch):
        raise DataNotFoundError(batch.message)
    return batch.to(device, non_blocking=True)


def stream_batches(files: ImageNetCFiles, items: Sequence[tuple[str, int, int]] | StreamItems, batch_size: int,
                   device: torch.device, workers: int = 4, prefetch: int = 2) -> Iterator[torch.Tensor]:
    """Uint8 NCHW batches of `items` on `device`, in item order, decoded by `workers` processes."""
    items = items if isinstance(items, StreamItems) else StreamItems.from_tuples(items)
    if len(items) == 0:
        return
    files.check_items(items)
    device = torch.device(device)
    # Every file was checked above, so batches are plain consecutive slices of the items.
    sampler = BatchSampler(SequentialSampler(range(len(items))), batch_size, drop_last=False)
    loader = DataLoader(
        _JpegDataset(files, items),
        batch_sampler=sampler,
        collate_fn=_collate,
        num_workers=workers,
        # Batches queued per worker (DataLoader's meaning), so workers*prefetch are decoded ahead.
        prefetch_factor=max(1, prefetch) if workers > 0 else None,
        pin_memory=device.type == "cuda",
        # SLURM signals every process of a job; the main process checkpoints and stops the workers.
        worker_init_fn=ignore_stop_signals,
    )
    batches = iter(loader)
    ahead: torch.Tensor | None = None  # one batch ahead: its copy is queued while the caller computes
    try:
        # next() rather than a for loop, so that the finally clause holds the only reference.
        while (host_batch := next(batches, None)) is not None:
            current, ahead = ahead, _to_device(host_batch, device)
            if current is not None:
                yield current
        if ahead is not None:
            yield ahead
    finally:
        # Stop the workers now, also on errors and early exits, not when a traceback is freed.
        batches = None
