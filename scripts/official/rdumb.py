"""rdumb from oripress/CCC (`models/rdumb.py`), the official RDumb code.

The official class hard-codes its ImageNet values (E0 = 0.4 ln 1000, d_margin 0.05, SGD 2.5e-4
momentum 0.9, reset every 1,000 steps); the adapter sets tta_bench's effective values on the
instance after construction (E0 for C classes, d_margin, the optimizer) so both sides use the same
hyperparameters. The digits_c stream has 150 batches, fewer than one reset interval, so the
comparison `rdumb_reset10` also runs both sides with a reset every 10 batches (the official
interval patched through `total_steps`' modulus in a subclass).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import ModuleType

import torch

from common import Context

CHECKOUT = "oripress/CCC"
STOCHASTIC: set[str] = set()
OURS = {"rdumb_reset10": ("rdumb", {"reset_every": 10})}


def load_rdumb(checkout: Path, ctx: Context) -> ModuleType:
    """models/rdumb.py of the checkout.

    The checkout's `models/__init__.py` imports its submodules before `registery`, which they import
    from, so the package cannot be imported as is; a stand-in `models` module provides the two
    names rdumb.py takes from it (`AdaptiveModel`, `register` from registery.py, and `functional`).
    """
    registery = ctx.load(checkout, "models/registery.py", "official_ccc_registery")
    package = ModuleType("models")
    package.AdaptiveModel, package.register = registery.AdaptiveModel, registery.register
    package.functional = ctx.load(checkout, "models/functional.py", "official_ccc_functional")
    saved = sys.modules.get("models")
    sys.modules["models"] = package
    try:
        return ctx.load(checkout, "models/rdumb.py", "official_ccc_rdumb")
    finally:  # other checkouts (the public harness) have a `models` package of their own
        if saved is None:
            sys.modules.pop("models")
        else:
            sys.modules["models"] = saved


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official RDumb with tta_bench's effective hparams."""
    rdumb = load_rdumb(checkout, ctx)
    hp, interval = ctx.hparams, ctx.hparams.reset_every

    class Patched(rdumb.RDumb):
        def forward(self, x):
            # The official reset test is `total_steps % 1000 == 0`; map the counter onto our interval.
            steps = self.total_steps
            self.total_steps = 0 if steps % interval == 0 else steps
            try:
                return super().forward(x)
            finally:
                self.total_steps = steps + 1

    official = Patched(model)
    official.e_margin = hp.e_margin_scale * math.log(ctx.num_classes)
    official.d_margin = hp.d_margin
    params = [p for group in official.optimizer.param_groups for p in group["params"]]
    if hp.optimizer == "adam":
        official.optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta, 0.999))
    else:
        official.optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum)
    official.optimizer_state = __import__("copy").deepcopy(official.optimizer.state_dict())
    return official


METHODS = {"rdumb": setup, "rdumb_reset10": setup}
