"""cotta from qinenergy/cotta (`cifar/cotta.py`, set-up as `cifar/cifar10c.py` `setup_cotta`).

Two runtime patches, neither touching the checkout's files or its algorithm:
- `get_tta_transforms` passes `resample=`/`fillcolor=` to `transforms.RandomAffine`, keywords that
  torchvision removed (0.15); the official module's `transforms` name is replaced by a copy of
  torchvision.transforms whose RandomAffine maps them to `interpolation=`/`fill=` (bilinear, 0), the
  meaning they had in the torchvision the official code was written for.
- the stochastic restore calls `.cuda()` on the mask; during each official call `Tensor.cuda` returns
  the tensor itself, so it runs on the CPU.
The transform's hard-coded img_shape (32, 32) matches the 32x32 digits_c images, so it is left as is.
The official CIFAR code always uses soft CE and 32 augmentations; tta_bench's cifar preset matches.

Two comparison names: `cotta` (tta_bench's cifar preset, which runs the augmented teacher passes on
every batch as the official CIFAR code and so draws the same random numbers in the same order on the
CPU: compared prediction by prediction) and `cotta_skip_confident` (`augment_always=False`, the
ImageNet behaviour of skipping the passes on confident batches, which changes the random stream:
compared by mean error over seeds).
"""

from __future__ import annotations

import contextlib
import io
import types
from pathlib import Path
from typing import Any, Iterator

import torch
import torchvision.transforms as tv_transforms

from common import Context

CHECKOUT = "qinenergy/cotta"
STOCHASTIC = {"cotta_skip_confident"}
OURS = {"cotta_skip_confident": ("cotta", {"augment_always": False})}


def _random_affine(*args: Any, resample: Any = None, fillcolor: Any = None, **kwargs: Any) -> tv_transforms.RandomAffine:
    """RandomAffine accepting the pre-0.13 keywords the official code passes (PIL bilinear, fill None)."""
    if resample is not None:
        kwargs.setdefault("interpolation", tv_transforms.InterpolationMode.BILINEAR)
    kwargs.setdefault("fill", 0 if fillcolor is None else fillcolor)
    return tv_transforms.RandomAffine(*args, **kwargs)


def _transforms_shim() -> types.ModuleType:
    """A copy of torchvision.transforms with the compatible RandomAffine."""
    shim = types.ModuleType("torchvision_transforms_compat")
    shim.__dict__.update({k: v for k, v in vars(tv_transforms).items() if not k.startswith("__")})
    shim.RandomAffine = _random_affine
    return shim


@contextlib.contextmanager
def _cuda_is_identity() -> Iterator[None]:
    """Within the block, `Tensor.cuda()` returns the tensor unchanged (CPU-only machine)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


class OfficialCoTTA:
    """Calls the official CoTTA module with `.cuda()` neutralised; reset as the official reset."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with _cuda_is_identity():
            return self.module(x).detach()

    def reset(self) -> None:
        self.module.reset()


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context) -> OfficialCoTTA:
    """The official CIFAR CoTTA with tta_bench's effective hparams (Adam 1e-3, MT, RST, AP)."""
    hp = ctx.hparams
    if hp.n_augmentations != 32 or hp.loss != "soft_ce" or hp.optimizer != "adam":
        raise ValueError("the official CIFAR CoTTA hard-codes 32 augmentations, soft CE; the cifar10 cfg uses Adam")
    cotta = ctx.load(checkout, "cifar/cotta.py", "official_cotta")
    cotta.transforms = _transforms_shim()
    with contextlib.redirect_stdout(io.StringIO()):  # collect_params prints every parameter name
        model = cotta.configure_model(model)
        params, _ = cotta.collect_params(model)
    optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta, 0.999), weight_decay=hp.weight_decay)
    return OfficialCoTTA(cotta.CoTTA(model, optimizer, steps=hp.steps, episodic=False,
                                     mt_alpha=hp.mt, rst_m=hp.rst, ap=hp.ap))


METHODS = {"cotta": setup, "cotta_skip_confident": setup}
