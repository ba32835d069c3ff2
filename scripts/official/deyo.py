"""deyo from Jhyun17/DeYO (`methods/deyo.py`; the optimizer set-up of `main.py` transcribed).

Needs `einops` (imported by the official deyo.py; `pip install einops`). main.py builds
`DeYO(net, args, optimizer, deyo_margin=..., margin_e0=...)` over `collect_params` of the configured
model; `args` carries the DeYO options. The adapter passes tta_bench's effective hparams (the CIFAR
preset: Adam 1e-3 as the public harness, tau 0.2, margins 0.5/0.4 ln 10). The official `DeYO.reset`
refers to states it never saves (main.py never resets), so the adapter's `reset` restores copies
taken at set-up. The official patch shuffle draws from the CPU generator, as ours does on the CPU.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from common import Context
from tta_bench.methods.sar import official_lr

CHECKOUT = "Jhyun17/DeYO"
STOCHASTIC = {"deyo"}


class OfficialDeYO:
    """Batch -> logits around the official DeYO module, with a working reset."""

    def __init__(self, deyo: torch.nn.Module):
        self.deyo, self.batches = deyo, 0
        self.initial = copy.deepcopy((deyo.model.state_dict(), deyo.optimizer.state_dict()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _, _ = self.deyo(x, self.batches)
        self.batches += 1
        return outputs.detach()

    def reset(self) -> None:
        model_state, optimizer_state = copy.deepcopy(self.initial)
        self.deyo.model.load_state_dict(model_state, strict=True)
        self.deyo.optimizer.load_state_dict(optimizer_state)


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context) -> OfficialDeYO:
    """The official DeYO with tta_bench's effective hparams."""
    deyo = ctx.load(checkout, "methods/deyo.py", "official_deyo")
    hp = ctx.hparams
    model = deyo.configure_model(model)
    params, _ = deyo.collect_params(model)
    lr = official_lr(hp.lr, hp.lr_rule, ctx.batch_size)
    if hp.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, betas=(hp.beta, 0.999))
    else:
        optimizer = torch.optim.SGD(params, lr, momentum=hp.momentum)
    args = SimpleNamespace(
        wandb_log=0, filter_ent=int(hp.filter_ent), filter_plpd=int(hp.filter_plpd),
        reweight_ent=int(hp.reweight_ent), reweight_plpd=int(hp.reweight_plpd), plpd_threshold=hp.plpd_threshold,
        aug_type=hp.aug_type, patch_len=hp.patch_len, occlusion_size=hp.occlusion_size, row_start=hp.row_start,
        column_start=hp.column_start)
    log_c = math.log(ctx.num_classes)
    return OfficialDeYO(deyo.DeYO(model, args, optimizer, deyo_margin=hp.deyo_margin_scale * log_c,
                                  margin_e0=hp.e_margin_scale * log_c))


METHODS = {"deyo": setup}
