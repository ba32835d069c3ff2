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


def _write_cifar_batch(path, images, labels, key=b"labels"):
    import pickle

    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", key: labels.tolist(), b"data": data, b"filenames": []}, f, protocol=2)


def test_clean_cifar_batches_in_torchvision_layout(tmp_path):
    from tta_bench.data.cifar_clean import load_cifar_clean

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    _write_cifar_batch(folder / "test_batch", images, np.array([3, 1, 4, 1]))
    x, y = load_cifar_clean("cifar10_c", tmp_path, "test")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 1, 4, 1] and y.dtype == np.int64
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar_clean("cifar10_c", tmp_path, "train")


def test_clean_cifar_loader_refuses_code_in_pickles(tmp_path):
    import os
    import pickle

    from tta_bench.data.cifar_clean import load_cifar_clean

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataNotFoundError, match="refusing"):
        load_cifar_clean("cifar10_c", tmp_path, "test")
