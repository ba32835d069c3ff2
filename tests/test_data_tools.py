"""Archive checks, the offline download instructions, and `python -m tta_bench.data verify`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from tta_bench.data.archives import ARCHIVES, Archive, check_archive
from tta_bench.data.cifar_c import write_corruption_files
from tta_bench.data.domains import ALL_CORRUPTIONS

REPO = Path(__file__).resolve().parents[1]


def test_check_archive_size_and_sha256(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"hello")
    good = Archive("x.tar", "u", "X", 5, hashlib.sha256(b"hello").hexdigest())
    assert check_archive(path, good) is None
    assert "bytes" in check_archive(path, Archive("x.tar", "u", "X", 6, good.sha256))
    assert "sha256 mismatch" in check_archive(path, Archive("x.tar", "u", "X", 5, "0" * 64))


def test_published_checksums_are_the_specs():
    assert ARCHIVES["cifar10_c"][0].sha256.startswith("c72763e1") and ARCHIVES["cifar10_c"][0].size == 2_918_471_680
    assert ARCHIVES["cifar100_c"][0].sha256.startswith("30ee6543")


def test_offline_download_prints_what_to_fetch(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/download_data.py", "cifar10_c", "imagenet_c", "--offline",
                           "--data-root", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "zenodo.org/records/2535967" in proc.stderr and "c72763e1" in proc.stderr
    assert f"{tmp_path}/CIFAR-10-C/" in proc.stderr and "weather.tar" in proc.stderr


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tta_bench.data", "verify", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_verify_names_what_is_wrong(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    rng = np.random.default_rng(0)
    arrays = {c: rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8) for c in ALL_CORRUPTIONS}
    write_corruption_files(folder, arrays, rng.integers(0, 10, 2))
    ok = _verify("cifar10_c", "--data-root", str(tmp_path))
    assert ok.returncode == 0, ok.stdout
    np.save(folder / "fog.npy", np.zeros((10, 8, 8, 3), np.float32))
    (folder / "snow.npy").write_bytes((folder / "snow.npy").read_bytes()[:-100])  # truncated download
    (folder / "frost.npy").unlink()
    bad = _verify("cifar10_c", "--data-root", str(tmp_path))
    assert bad.returncode == 1
    assert "fog.npy: dtype float32" in bad.stdout and "snow.npy: unreadable or truncated" in bad.stdout
    assert "frost.npy: missing" in bad.stdout
