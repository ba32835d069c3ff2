"""Write small fixtures in exactly the real on-disk formats, for acceptance checks without the real files.

Random pixels and random weights, but the real layouts and architectures:
- `<data_root>/CIFAR-10-C/`, `CIFAR-100-C/`: 15 + 4 corruption `.npy` files of `--cifar-rows` rows per severity;
- `<data_root>/ImageNet-C/<corruption>/<1-5>/<wnid>/*.JPEG` (224x224, quality 85): the images of
  RobustBench's 5,000-image list that a `--imagenet-n`-image stream with `--seed` selects;
- `<model_dir>/cifar10/corruptions/Standard.pt` (WRN-28-10) and `cifar100/corruptions/Hendrycks2020AugMix_ResNeXt.pt`
  (ResNeXt-29), saved as {'state_dict'} with `module.`;
- `<torch_home>/hub/checkpoints/resnet50-0676ba61.pth` (torchvision ResNet-50, bare state dict).
Then, for example:
  python run.py method=tent data=cifar10_c_continual data_root=D model_dir=M data.n_examples=400
  TORCH_HOME=T python run.py method=tent data=imagenet_c_continual data_root=D data.n_examples=64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tta_bench.fixtures import checkpoints, cifar_c, imagenet_c


def main() -> None:
    """Write every fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--torch-home", type=Path, required=True)
    parser.add_argument("--cifar-rows", type=int, default=400)
    parser.add_argument("--imagenet-n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cifar_c(args.data_root, args.cifar_rows, rng)
    cifar_c(args.data_root, args.cifar_rows, rng, "CIFAR-100-C", 100)
    imagenet_c(args.data_root, args.imagenet_n, args.seed, rng)
    checkpoints(args.model_dir, args.torch_home)
    print(f"fixtures written under {args.data_root}, {args.model_dir}, {args.torch_home}")


if __name__ == "__main__":
    main()
