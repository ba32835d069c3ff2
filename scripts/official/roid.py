"""roid from mariodoebler/test-time-adaptation (`classification/methods/roid.py`, its TTAMethod base).

Pass the repository root or its `classification/` folder as --checkout roid=PATH. The official ROID
class is built around the digits_c model with a cfg made of conf.py's defaults, cfgs/cifar10_c/roid.yaml
and the effective tta_bench hparams (optimizer, steps, ROID options), TEST.BATCH_SIZE = the comparison
batch size. Nothing of the checkout's logic is changed; at runtime only imports are adapted
(harness_common.py: yacs/iopath stand-ins, `models.model` stub, packages registered without their
`__init__`). No CUDA-only call is on ROID's path: the device falls back to "cpu" and mixed precision is off.
`roid_no_consistency` runs tta_bench `roid` with use_consistency=False against ROID.USE_CONSISTENCY False
(deterministic); `roid` with the augmentation term is compared by mean error over seeds.
"""

from __future__ import annotations

from pathlib import Path

import torch

import harness_common
from common import Context

CHECKOUT = "mariodoebler/test-time-adaptation"
STOCHASTIC = {"roid"}
OURS = {"roid_no_consistency": ("roid", {"use_consistency": False})}


def make_cfg(checkout: Path, ctx: Context):
    """conf.py defaults + cfgs/cifar10_c/roid.yaml + the tta_bench hparams of this comparison."""
    hp = ctx.hparams
    return harness_common.make_cfg(checkout, "roid.yaml", ctx, {
        "ROID": {"USE_WEIGHTING": hp.use_weighting, "USE_PRIOR_CORRECTION": hp.use_prior_correction,
                 "USE_CONSISTENCY": hp.use_consistency, "MOMENTUM_SRC": hp.momentum_src,
                 "MOMENTUM_PROBS": hp.momentum_probs, "TEMPERATURE": hp.temperature},
    })


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official ROID around `model`; the comparison name only selects the hparams (see OURS)."""
    roid = harness_common.load(checkout, "methods/roid.py")
    return roid.ROID(make_cfg(checkout, ctx), model, ctx.num_classes)


METHODS = {"roid": setup, "roid_no_consistency": setup}
