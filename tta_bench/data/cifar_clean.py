"""Clean CIFAR-10/100 in torchvision's `cifar-10-batches-py` / `cifar-100-python` layout.

The source data of preparation steps (Fisher, prototypes, warm-up) and of the clean forgetting
probe. The batches are Python pickles; they are read with an unpickler that only constructs
numpy arrays, lists, dicts and strings, so a tampered file cannot run code (`pickle.load` would).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tta_bench.data.cifar_c import Download
from tta_bench.errors import DataNotFoundError

LAYOUTS = {
    # dataset: (folder, train files, test files, label key, archive)
    "cifar10_c": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
                  Download("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")),
    "cifar100_c": ("cifar-100-python", ["train"], ["test"], b"fine_labels",
                   Download("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")),
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"),
            ("_codecs", "encode")}  # how Python 3 pickles raw bytes at protocol 2; harmless


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataNotFoundError(f"{path} is not a valid CIFAR batch file ({exc}); re-download it") from exc


def load_cifar_clean(dataset: str, data_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and int64 labels of the clean `train` or `test` split."""
    folder_name, train, test, label_key, download = LAYOUTS[dataset]
    folder = Path(data_root) / folder_name
    files = [folder / f for f in (train if split == "train" else test)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"missing clean {split} data {', '.join(map(str, missing))}; download "
                                f"{download.archive} from {download.url} and unpack it in {data_root}/")
    batches = [_read_batch(p) for p in files]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return np.ascontiguousarray(images, dtype=np.uint8), labels
