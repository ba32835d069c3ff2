"""Small fixtures in exactly the real on-disk formats (random pixels, random weights, real layouts
and architectures), for tests and for acceptance checks without the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from tta_bench.data.cifar_c import write_corruption_files
from tta_bench.data.domains import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, SEVERITIES
from tta_bench.data.imagenet_c import read_list_file, robustbench_list_file
from tta_bench.data.streams import StreamSpec, select_rows
from tta_bench.models.robustbench_compat import model_zoo_entry


def cifar_c(root: Path, rows: int, rng: np.random.Generator, folder: str = "CIFAR-10-C", num_classes: int = 10) -> None:
    """A CIFAR-10-C (or CIFAR-100-C) folder with `rows` images per severity block."""
    arrays = {c: rng.integers(0, 256, (5 * rows, 32, 32, 3), dtype=np.uint8) for c in ALL_CORRUPTIONS}
    write_corruption_files(root / folder, arrays, rng.integers(0, num_classes, rows))


def imagenet_c(root: Path, n: int, seed: int, rng: np.random.Generator,
               corruptions: tuple[str, ...] = BENCHMARK_CORRUPTIONS) -> None:
    """The JPEGs a continual `n`-image stream reads, at severity 5, plus every severity folder."""
    relpaths = read_list_file(robustbench_list_file())
    spec = StreamSpec("continual", corruptions, (5,), n, seed)
    rows = select_rows(len(relpaths), spec.n_examples, spec.shuffle, spec.seed)
    for c in corruptions:
        for s in SEVERITIES:
            (root / "ImageNet-C" / c / str(s)).mkdir(parents=True, exist_ok=True)
        for r in rows:
            path = root / "ImageNet-C" / c / "5" / relpaths[r]
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)  # smooth images keep the JPEGs small
            Image.fromarray(smooth).resize((224, 224), Image.BILINEAR).save(path, quality=85)


def _save_robustbench(model_dir: Path, dataset: str, name: str, skip: tuple[str, ...] = ()) -> None:
    model = model_zoo_entry(dataset, "corruptions", name)["model"]()
    path = model_dir / dataset / "corruptions" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items() if k not in skip}}, path)


def checkpoints(model_dir: Path, torch_home: Path) -> None:
    """Random-weight checkpoints saved the way RobustBench and torchvision save them."""
    _save_robustbench(model_dir, "cifar10", "Standard")
    # The published AugMix ResNeXt file lacks the model's normalisation buffers.
    _save_robustbench(model_dir, "cifar100", "Hendrycks2020AugMix_ResNeXt", skip=("mu", "sigma"))
    hub = torch_home / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50().state_dict(), hub / "resnet50-0676ba61.pth")
