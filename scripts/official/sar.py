"""sar from mr-eggplant/SAR (`sar.py`, `sam.py`; the optimizer set-up of `main.py` transcribed).

main.py builds `SAM(params, torch.optim.SGD, lr=args.lr, momentum=0.9)` over `collect_params` of
the configured model and wraps it in `SAR(net, optimizer, margin_e0=...)`; the adapter does the same
with tta_bench's effective hparams (the CIFAR preset: SGD lr 1e-3 momentum 0.9, as the public
harness; E0 = 0.4 ln 10). The official code prints a line at each model recovery; the adapter
counts those lines instead (`recoveries`). Runs unmodified on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch

from common import Context
from tta_bench.methods.sar import official_lr

CHECKOUT = "mr-eggplant/SAR"
STOCHASTIC: set[str] = set()


class QuietSAR:
    """The official SAR module, with its recovery messages counted rather than printed."""

    def __init__(self, sar: torch.nn.Module):
        self.sar, self.recoveries = sar, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            logits = self.sar(x)
        self.recoveries += out.getvalue().count("now reset the model")
        return logits.detach()

    def reset(self) -> None:
        self.sar.reset()


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context) -> QuietSAR:
    """The official SAR with tta_bench's effective hparams."""
    sar = ctx.load(checkout, "sar.py", "official_sar")
    sam = ctx.load(checkout, "sam.py", "official_sar_sam")
    hp = ctx.hparams
    model = sar.configure_model(model)
    params, _ = sar.collect_params(model)
    lr = official_lr(hp.lr, hp.lr_rule, ctx.batch_size)
    optimizer = sam.SAM(params, torch.optim.SGD, rho=hp.rho, lr=lr, momentum=hp.momentum)
    # The official test is a literal `ema < 0.2`; reset_constant_em is stored but unused.
    return QuietSAR(sar.SAR(model, optimizer, margin_e0=hp.e_margin_scale * math.log(ctx.num_classes),
                            reset_constant_em=hp.reset_constant))


METHODS = {"sar": setup}
