"""rotta from BIT-DA/RoTTA (`core/adapter/rotta.py` with its memory, robust BN and transforms).

The official adapter is built as `ptta.py` does (`build_optimizer(cfg)`, `RoTTA(cfg, model,
optimizer)`), with a plain attribute tree in place of the yacs config (RoTTA only reads
attributes; yacs is not needed). Runtime adaptations, no change to the checkout's logic:
- `timeliness_reweighting` calls `.cuda()`: wrapped so that `Tensor.cuda` is the identity while it
  runs (CPU only).
- `get_tta_transforms` passes `resample=`/`fillcolor=` to `RandomAffine`, removed from torchvision
  since 0.13: the module's `transforms` name is pointed at torchvision's transforms with a
  `RandomAffine` that maps them to `interpolation=`/`fill=` (fillcolor None -> fill 0, as the
  torchvision 0.11 the official code pins).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
import torchvision.transforms as T

from common import Context

CHECKOUT = "BIT-DA/RoTTA"
STOCHASTIC = {"rotta"}
PACKAGE = "official_rotta_core"


def load_package(checkout: Path) -> ModuleType:
    """Import the checkout's `core` package under a private name (its modules use relative imports)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, checkout / "core" / "__init__.py",
                                                      submodule_search_locations=[str(checkout / "core")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def random_affine(*args, resample=None, fillcolor=None, **kwargs) -> T.RandomAffine:
    """torchvision 0.11's RandomAffine signature on a current torchvision."""
    if resample is not None:
        kwargs["interpolation"] = T.InterpolationMode.BILINEAR if int(resample) == 2 else T.InterpolationMode.NEAREST
    kwargs.setdefault("fill", 0 if fillcolor is None else fillcolor)
    return T.RandomAffine(*args, **kwargs)


def on_cpu(fn):
    """`fn` with `Tensor.cuda` as the identity while it runs."""
    def wrapped(*args, **kwargs):
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.cuda = original
    wrapped.on_cpu = True
    return wrapped


def config(ctx: Context, image_size: tuple[int, int]) -> SimpleNamespace:
    """The attributes of the official yacs config that RoTTA and build_optimizer read."""
    hp = ctx.hparams
    rotta = SimpleNamespace(MEMORY_SIZE=hp.memory_size, UPDATE_FREQUENCY=hp.update_frequency, NU=hp.nu,
                            ALPHA=hp.alpha, LAMBDA_T=hp.lambda_t, LAMBDA_U=hp.lambda_u)
    optim = SimpleNamespace(METHOD={"adam": "Adam", "sgd": "SGD"}[hp.optimizer], STEPS=hp.steps, LR=hp.lr,
                            BETA=hp.beta, MOMENTUM=hp.momentum, DAMPENING=hp.dampening, NESTEROV=hp.nesterov,
                            WD=hp.weight_decay)
    return SimpleNamespace(ADAPTER=SimpleNamespace(NAME="rotta", RoTTA=rotta), OPTIM=optim,
                           CORRUPTION=SimpleNamespace(NUM_CLASS=ctx.num_classes), INPUT=SimpleNamespace(SIZE=image_size))


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official RoTTA adapter around `model` with tta_bench's effective hparams."""
    load_package(Path(checkout))
    transforms = importlib.import_module(f"{PACKAGE}.utils.custom_transforms")
    transforms.transforms = SimpleNamespace(**{**vars(T), "RandomAffine": random_affine})
    rotta = importlib.import_module(f"{PACKAGE}.adapter.rotta")
    optim = importlib.import_module(f"{PACKAGE}.optim.build")
    if not hasattr(rotta.timeliness_reweighting, "on_cpu"):
        rotta.timeliness_reweighting = on_cpu(rotta.timeliness_reweighting)
    size = tuple(ctx.source.images.shape[1:3])  # uint8 NHWC
    cfg = config(ctx, size)
    return rotta.RoTTA(cfg, model, optim.build_optimizer(cfg))


METHODS = {"rotta": setup}
