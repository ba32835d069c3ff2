"""Clean ImageNet in the ImageFolder layout, preprocessed like ImageNet-C (resize 256, crop 224)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tta_bench.data.imagenet_clean import load_imagenet_clean, preprocess
from tta_bench.errors import DataNotFoundError

WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def val(tmp_path):
    rng = np.random.default_rng(0)
    for k, w in enumerate(WNIDS):
        (tmp_path / "imagenet" / "val" / w).mkdir(parents=True)
        for j in range(3):
            size = (300 + 20 * j, 260 + 10 * k)  # varying sizes and aspect ratios, like the raw val set
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                tmp_path / "imagenet" / "val" / w / f"ILSVRC2012_val_{10 * k + j:08d}.JPEG", quality=90)
    return tmp_path


def test_preprocess_matches_resize_and_center_crop(val):
    path = val / "imagenet" / "val" / WNIDS[1] / "ILSVRC2012_val_00000012.JPEG"  # 340 x 270
    out = preprocess(path)
    with Image.open(path) as img:
        img = img.convert("RGB").resize((round(340 * 256 / 270), 256), Image.BILINEAR)
        left = (img.width - 224) // 2
        expected = np.asarray(img.crop((left, 16, left + 224, 240)))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_list_selects_files_and_labels_follow_wnids(val):
    relpaths = [f"{WNIDS[2]}/ILSVRC2012_val_00000020.JPEG", f"{WNIDS[0]}/ILSVRC2012_val_00000001.JPEG"]
    images, labels = load_imagenet_clean(val, "test", WNIDS, relpaths, workers=2)
    assert images.shape == (2, 224, 224, 3) and labels.tolist() == [2, 0]


def test_limit_spreads_over_classes(val):
    images, labels = load_imagenet_clean(val, "test", WNIDS, limit=3)
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_missing_folder_says_what_to_get(tmp_path):
    with pytest.raises(DataNotFoundError, match="ILSVRC2012.*imagenet/train"):
        load_imagenet_clean(tmp_path, "train", WNIDS)
