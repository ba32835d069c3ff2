"""The CIFAR-C reader on fixtures written in exactly the real on-disk format."""

from __future__ import annotations

import numpy as np
import pytest

from tta_bench.data.cifar_c import CorruptionFiles, write_corruption_files
from tta_bench.data.datasets import open_benchmark
from tta_bench.errors import DataNotFoundError


def _fixture(folder, n=7, corruptions=("fog", "snow")):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    arrays = {c: rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8) for c in corruptions}
    write_corruption_files(folder, arrays, labels)
    return arrays, labels


def test_reads_severity_blocks_of_any_size(tmp_path):
    arrays, labels = _fixture(tmp_path / "CIFAR-10-C", n=7)
    files = CorruptionFiles(tmp_path / "CIFAR-10-C", ("fog", "snow"))
    assert files.rows_per_severity == 7
    np.testing.assert_array_equal(files.labels, labels)
    np.testing.assert_array_equal(files.load("fog", 3), arrays["fog"][14:21])
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(files.load("snow", 5, rows), arrays["snow"][28 + rows])
    saved = np.load(tmp_path / "CIFAR-10-C" / "labels.npy")
    assert saved.dtype == np.uint8 and saved.shape == (35,)


def test_missing_files_name_the_archive_and_source(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        open_benchmark("cifar10_c", tmp_path, ("fog",))
    msg = str(err.value)
    assert str(tmp_path / "CIFAR-10-C" / "labels.npy") in msg
    assert "CIFAR-10-C.tar" in msg and "zenodo.org/records/2535967" in msg


def test_truncated_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    _fixture(folder, n=7)
    np.save(folder / "fog.npy", np.zeros((30, 32, 32, 3), np.uint8))
    files = CorruptionFiles(folder, ("fog",))
    with pytest.raises(DataNotFoundError, match="truncated"):
        files.load("fog", 1)
    (folder / "snow.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataNotFoundError, match="not a readable"):
        files.load("snow", 1)
