"""Reader for the CIFAR-10-C / CIFAR-100-C on-disk layout (also used by the embedded digits_c).

Layout (Hendrycks & Dietterich): `<root>/<corruption>.npy` uint8 (5*N, H, W, 3), rows
[(s-1)*N, s*N) holding severity s, and `<root>/labels.npy` (5*N,) with the N labels repeated.
Files are memory-mapped so a stream reads one domain at a time, never all 19 files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tta_bench.data.domains import SEVERITIES
from tta_bench.errors import DataNotFoundError

N_SEVERITIES = len(SEVERITIES)


@dataclass(frozen=True)
class Download:
    """Where a missing data set comes from, for error messages."""

    archive: str
    url: str
    sha256: str = ""


def _missing_message(paths: list[Path], folder: Path, download: Download | None) -> str:
    lines = ["missing data files:"] + [f"  {p}" for p in paths[:6]]
    if len(paths) > 6:
        lines.append(f"  ... and {len(paths) - 6} more")
    if download is not None:
        lines.append(f"download {download.archive} from {download.url}")
        if download.sha256:
            lines.append(f"  (sha256 {download.sha256})")
        lines.append(f"and unpack it so that the files lie in {folder}/")
    return "\n".join(lines)


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataNotFoundError(f"{path} is not a readable .npy array ({exc}); re-download it") from exc


class CorruptionFiles:
    """Memory-mapped access to one CIFAR-C-style folder."""

    def __init__(self, folder: Path, corruptions: tuple[str, ...], download: Download | None = None):
        self.folder = Path(folder)
        self.download = download
        wanted = [self.folder / "labels.npy"] + [self.folder / f"{c}.npy" for c in corruptions]
        missing = [p for p in wanted if not p.is_file()]
        if missing:
            raise DataNotFoundError(_missing_message(missing, self.folder, download))
        labels = _open_npy(self.folder / "labels.npy")
        if labels.ndim != 1 or labels.shape[0] % N_SEVERITIES:
            raise DataNotFoundError(
                f"{self.folder / 'labels.npy'} has shape {labels.shape}; expected (5*N,) "
                "with one block of N labels per severity"
            )
        # The block size comes from the file, so small fixtures and the real 10,000-row files
        # are read by the same code.
        self.rows_per_severity = labels.shape[0] // N_SEVERITIES
        self.labels = np.asarray(labels[: self.rows_per_severity], dtype=np.int64)

    def _array(self, corruption: str) -> np.ndarray:
        path = self.folder / f"{corruption}.npy"
        if not path.is_file():
            raise DataNotFoundError(_missing_message([path], self.folder, self.download))
        arr = _open_npy(path)
        expected = N_SEVERITIES * self.rows_per_severity
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != expected or arr.shape[3] != 3:
            raise DataNotFoundError(
                f"{path} has dtype {arr.dtype} and shape {arr.shape}; expected uint8 "
                f"({expected}, H, W, 3) to match labels.npy (file truncated or from another data set?)"
            )
        return arr

    def load(self, corruption: str, severity: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Images (n, H, W, 3) uint8 of one domain; `rows` index the severity block (file order)."""
        if severity not in SEVERITIES:
            raise DataNotFoundError(f"severity must be one of {SEVERITIES}, got {severity}")
        start = (severity - 1) * self.rows_per_severity
        block = self._array(corruption)[start : start + self.rows_per_severity]
        if rows is None:
            return np.ascontiguousarray(block)
        # Sorted reads keep memory-mapped access sequential; the inverse restores stream order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + block.shape[1:], dtype=np.uint8)
        out[order] = block[rows[order]]
        return out


def write_corruption_files(folder: Path, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Write arrays in the CIFAR-C layout (used by the embedded benchmark and test fixtures)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), N_SEVERITIES), allow_pickle=False)
