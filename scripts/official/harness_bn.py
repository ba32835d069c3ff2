"""bn_alpha from the public harness mariodoebler/test-time-adaptation (`classification/methods/bn.py`).

The harness's `BNAlpha.configure_model` (methods/norm.py) puts the model in eval mode, freezes it
and calls `AlphaBatchNorm.adapt_model(model, alpha=cfg.BN.ALPHA)`; its `forward_and_adapt` (from
`Source`) is a no-grad forward. Importing methods/norm.py would pull in the harness's model zoo
(timm, robustbench, ...), so this adapter runs those two official steps directly with the
unmodified `AlphaBatchNorm` of methods/bn.py. At batch size 1 the harness's `TTAMethod.forward`
goes through its sliding window, which with the default TEST.WINDOW_LENGTH 1 forwards exactly the
current image; so a plain forward of each batch-1 input is what the harness computes.
methods/bn.py is imported once per process through harness_common.py, as rmt.py and roid.py do
(--checkout harness_bn= the repository root or its classification/ folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

import harness_common
from common import Context

CHECKOUT = "mariodoebler/test-time-adaptation"
STOCHASTIC: set[str] = set()


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The harness's BN-alpha model (alpha = the tta_bench hparams' alpha weighting the batch side)."""
    if ctx.hparams.alpha_weights != "batch":
        raise ValueError("the harness's AlphaBatchNorm weights the batch statistics by alpha")
    bn = harness_common.load(checkout, "methods/bn.py")
    model.eval().requires_grad_(False)
    model = bn.AlphaBatchNorm.adapt_model(model, alpha=ctx.hparams.alpha)
    return torch.no_grad()(model)


METHODS = {"bn_alpha": setup}
