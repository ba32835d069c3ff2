"""The ImageNet-C reader and streaming JPEG loader on a tiny tree of real JPEG files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench.data.imagenet_c import ImageNetCFiles, StreamItems, robustbench_list_file, stream_batches
from tta_bench.errors import DataNotFoundError

WNIDS = ("n01443537", "n01440764", "n01484850")  # written unsorted: labels must follow sorted order
CORRUPTIONS = ("gaussian_noise", "fog")
PER_CLASS = 3
SIZE = 32
# A RobustBench-style subset in its own (unsorted) order; files k*3..k*3+2 belong to WNIDS[k].
LIST = [
    "n01484850/ILSVRC2012_val_00000007.JPEG",
    "n01440764/ILSVRC2012_val_00000003.JPEG",
    "n01443537/ILSVRC2012_val_00000000.JPEG",
    "n01440764/ILSVRC2012_val_00000005.JPEG",
    "n01443537/ILSVRC2012_val_00000001.JPEG",
]


def _write_tree(root: Path) -> Path:
    folder = root / "ImageNet-C"
    rng = np.random.default_rng(0)
    for c in CORRUPTIONS:
        for s in range(1, 6):
            for k, w in enumerate(WNIDS):
                (folder / c / str(s) / w).mkdir(parents=True)
                for j in range(PER_CLASS):
                    name = f"ILSVRC2012_val_{k * PER_CLASS + j:08d}.JPEG"
                    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / c / str(s) / w / name, "JPEG", quality=85)
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    folder = _write_tree(tmp_path)
    list_file = tmp_path / "imagenet_test_image_ids.txt"
    list_file.write_text("\n".join(LIST))  # no trailing newline, like RobustBench's file
    return folder, list_file


def _pil(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_labels_follow_sorted_wnids_and_list_order(tree):
    folder, list_file = tree
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    assert files.relpaths == LIST
    # RobustBench's canonical 1000-wnid order when installed, else the sorted folders: same indices here.
    assert files.wnids[: len(WNIDS)] == sorted(WNIDS)
    np.testing.assert_array_equal(files.labels, [2, 0, 1, 0, 1])
    assert files.labels.dtype == np.int64
    assert files.path("fog", 3, 1) == folder / "fog" / "3" / LIST[1]


def test_load_decodes_rows_in_order(tree):
    folder, list_file = tree
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    rows = np.array([4, 0, 2])
    images = files.load("fog", 2, rows)
    assert images.dtype == np.uint8 and images.shape == (3, SIZE, SIZE, 3)
    for img, r in zip(images, rows):
        np.testing.assert_array_equal(img, _pil(folder / "fog" / "2" / LIST[r]))
    assert files.load("gaussian_noise", 5).shape == (len(LIST), SIZE, SIZE, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_batches_match_load_in_item_order(tree, workers):
    folder, list_file = tree
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    items = [("fog", 5, 3), ("gaussian_noise", 1, 0), ("fog", 5, 0), ("fog", 2, 4),
             ("gaussian_noise", 1, 2), ("fog", 5, 1), ("gaussian_noise", 3, 3)]
    batches = list(stream_batches(files, items, batch_size=3, device=torch.device("cpu"), workers=workers))
    assert [len(b) for b in batches] == [3, 3, 1]
    got = torch.cat(batches)
    assert got.dtype == torch.uint8 and got.shape == (len(items), 3, SIZE, SIZE)
    expected = np.stack([files.load(c, s, np.array([r]))[0] for c, s, r in items])
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)


def test_stream_items_arrays_equal_tuples(tree):
    folder, list_file = tree
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    arrays = StreamItems((("fog", 1), ("gaussian_noise", 4)), np.array([1, 0, 1]), np.array([2, 2, 0]))
    tuples = [("gaussian_noise", 4, 2), ("fog", 1, 2), ("gaussian_noise", 4, 0)]
    a = torch.cat(list(stream_batches(files, arrays, 2, torch.device("cpu"), workers=0)))
    b = torch.cat(list(stream_batches(files, tuples, 2, torch.device("cpu"), workers=0)))
    assert torch.equal(a, b)
    assert list(stream_batches(files, [], 2, torch.device("cpu"), workers=0)) == []


def test_all_images_lists_every_file_sorted(tree):
    folder, _ = tree
    files = ImageNetCFiles(folder, CORRUPTIONS, all_images=True)
    expected = sorted(f"{w}/ILSVRC2012_val_{k * PER_CLASS + j:08d}.JPEG"
                      for k, w in enumerate(WNIDS) for j in range(PER_CLASS))
    assert files.relpaths == expected
    np.testing.assert_array_equal(files.labels, np.repeat([0, 1, 2], PER_CLASS))
    assert files.load("fog", 4).shape == (len(expected), SIZE, SIZE, 3)


def test_all_images_checks_other_domains_lazily(tree):
    folder, _ = tree
    gone = folder / "fog" / "3" / "n01440764" / "ILSVRC2012_val_00000004.JPEG"
    gone.unlink()
    files = ImageNetCFiles(folder, CORRUPTIONS, all_images=True)  # opening does not scan fog@3
    files.load("fog", 2)
    with pytest.raises(DataNotFoundError, match="ILSVRC2012_val_00000004"):
        files.load("fog", 3)
    extra = folder / "fog" / "1" / "n01440764" / "ILSVRC2012_val_00000099.JPEG"
    extra.write_bytes((folder / "fog" / "2" / "n01440764" / "ILSVRC2012_val_00000004.JPEG").read_bytes())
    with pytest.raises(DataNotFoundError, match="incomplete"):
        files.load("fog", 1)
    for path in sorted((folder / "gaussian_noise" / "5").glob("*/*.JPEG"))[:7]:
        path.unlink()
    with pytest.raises(DataNotFoundError, match=r"\.\.\. and 1 more"):  # 7 missing, 6 named
        files.load("gaussian_noise", 5, np.array([8]))


def test_missing_corruption_folder_names_archive_and_zenodo(tree):
    folder, list_file = tree
    with pytest.raises(DataNotFoundError) as err:
        ImageNetCFiles(folder, ("gaussian_noise", "snow", "fog", "defocus_blur"), list_file)
    msg = str(err.value)
    assert f"{folder / 'snow'}\n" in msg and f"{folder / 'defocus_blur'}\n" in msg
    assert "blur.tar" in msg and "weather.tar" in msg and "noise.tar" not in msg
    assert "https://zenodo.org/records/2235448" in msg and f"{folder}/" in msg
    for s in (2, 5):
        (folder / "fog" / str(s)).rename(folder / f"fog{s}")
    with pytest.raises(DataNotFoundError, match=str(folder / "fog" / "5")):
        ImageNetCFiles(folder, CORRUPTIONS, list_file)


def test_missing_file_names_path_and_archive(tree):
    folder, list_file = tree
    gone = folder / "gaussian_noise" / "2" / LIST[3]
    gone.unlink()
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    with pytest.raises(DataNotFoundError) as err:
        files.load("gaussian_noise", 2, np.array([3]))
    msg = str(err.value)
    assert str(gone) in msg and "noise.tar" in msg and "zenodo.org/records/2235448" in msg
    items = [("fog", 2, 0), ("gaussian_noise", 2, 3)]
    with pytest.raises(DataNotFoundError, match="noise.tar"):
        list(stream_batches(files, items, 1, torch.device("cpu"), workers=0))


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_jpeg_is_a_clear_error(tree, workers):
    folder, list_file = tree
    bad = folder / "fog" / "4" / LIST[2]
    bad.write_bytes(bad.read_bytes()[:300])
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    with pytest.raises(DataNotFoundError) as err:
        list(stream_batches(files, [("fog", 4, r) for r in range(5)], 2, torch.device("cpu"), workers=workers))
    msg = str(err.value)
    assert str(bad) in msg and "not a readable JPEG" in msg and "weather.tar" in msg
    assert "Traceback" not in msg  # not re-raised with the worker's traceback
    with pytest.raises(DataNotFoundError, match="not a readable JPEG"):
        files.load("fog", 4, np.array([2]))


def test_mixed_image_sizes_in_a_batch_are_an_error(tree):
    folder, list_file = tree
    odd = folder / "fog" / "1" / LIST[1]
    Image.fromarray(np.zeros((SIZE + 8, SIZE, 3), dtype=np.uint8)).save(odd, "JPEG", quality=85)
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    with pytest.raises(DataNotFoundError, match=str(odd)):
        list(stream_batches(files, [("fog", 1, 0), ("fog", 1, 1)], 2, torch.device("cpu"), workers=0))


def _fake_robustbench(base: Path, with_list: bool) -> Path:
    pkg = base / "robustbench"
    (pkg / "helper_files").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    if with_list:
        (pkg / "helper_files" / "imagenet_test_image_ids.txt").write_text("\n".join(LIST) + "\n")
    return pkg


def test_default_list_is_found_via_find_spec_without_import(tree, tmp_path, monkeypatch):
    folder, _ = tree
    pkg = _fake_robustbench(tmp_path / "site", with_list=True)
    monkeypatch.delitem(sys.modules, "robustbench", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert robustbench_list_file() == pkg / "helper_files" / "imagenet_test_image_ids.txt"
    files = ImageNetCFiles(folder, CORRUPTIONS)
    assert files.relpaths == LIST
    assert "robustbench" not in sys.modules


def test_without_robustbench_the_error_says_how_to_fix(tree, tmp_path, monkeypatch):
    folder, _ = tree
    _fake_robustbench(tmp_path / "site", with_list=False)  # shadows any installed robustbench
    monkeypatch.delitem(sys.modules, "robustbench", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(DataNotFoundError) as err:
        ImageNetCFiles(folder, CORRUPTIONS)
    assert "pip install robustbench" in str(err.value) and "imagenet_test_image_ids.txt" in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_missing_files_raise_before_any_batch(tree, workers):
    folder, list_file = tree
    (folder / "fog" / "3" / LIST[1]).unlink()
    files = ImageNetCFiles(folder, CORRUPTIONS, list_file)
    items = [("fog", 2, r) for r in range(5)] + [("fog", 3, r) for r in range(5)]
    got = []
    with pytest.raises(DataNotFoundError, match=str(folder / "fog" / "3" / LIST[1])):
        for batch in stream_batches(files, items, 2, torch.device("cpu"), workers=workers):
            got.append(len(batch))
    assert got == []  # every file a stream needs is checked before decoding starts
