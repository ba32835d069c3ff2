"""Public archives of the benchmarks: where they come from, their sizes and checksums, and where
they unpack. Used by `scripts/download_data.py` and by `python -m tta_bench.data verify`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    """One downloadable file and the folder it unpacks to under the data root."""

    name: str
    url: str
    unpacks_to: str
    size: int | None = None
    sha256: str | None = None  # None where no checksum is published in the specs
    md5: str | None = None


ZENODO_CIFAR10_C = "https://zenodo.org/records/2535967/files"
ZENODO_CIFAR100_C = "https://zenodo.org/records/3555552/files"
ZENODO_IMAGENET_C = "https://zenodo.org/records/2235448/files"

ARCHIVES: dict[str, list[Archive]] = {
    "cifar10_c": [Archive("CIFAR-10-C.tar", f"{ZENODO_CIFAR10_C}/CIFAR-10-C.tar?download=1", "CIFAR-10-C",
                          2_918_471_680, "c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7")],
    "cifar100_c": [Archive("CIFAR-100-C.tar", f"{ZENODO_CIFAR100_C}/CIFAR-100-C.tar?download=1", "CIFAR-100-C",
                           2_918_473_216, "30ee6543a1bfd049fa33834b7c1ada301e7064b7fbe8fc38340eb8b62ced4b33")],
    "imagenet_c": [Archive(f"{group}.tar", f"{ZENODO_IMAGENET_C}/{group}.tar?download=1", "ImageNet-C")
                   for group in ("noise", "blur", "weather", "digital", "extra")],
    # Clean source data for preparation steps (torchvision's layout; md5 as torchvision checks it).
    "cifar10": [Archive("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                        "cifar-10-batches-py", 170_498_071, md5="c58f30108f718f92721af3b95e74349a")],
    "cifar100": [Archive("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                         "cifar-100-python", 169_001_437, md5="eb9058c3a382ffc7106e4002c42a8d85")],
}


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 22) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_archive(path: Path, archive: Archive) -> str | None:
    """None when the file matches the known size and checksum, else what is wrong."""
    if archive.size is not None and path.stat().st_size != archive.size:
        return f"{path} has {path.stat().st_size:,} bytes, expected {archive.size:,} (incomplete download?)"
    for algorithm, expected in (("sha256", archive.sha256), ("md5", archive.md5)):
        if expected and file_digest(path, algorithm) != expected:
            return f"{path}: {algorithm} mismatch (expected {expected}); delete it and download again"
    return None
