"""source, norm and tent from DequanWang/tent (`tent.py`, `norm.py`, cfgs/tent.yaml)."""

from __future__ import annotations

from pathlib import Path

import torch

from common import Context

CHECKOUT = "DequanWang/tent"
STOCHASTIC: set[str] = set()


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official set-up of `name` as in tent's cifar10c.py."""
    if name == "source":
        model.eval().requires_grad_(False)
        return torch.no_grad()(model)
    if name == "norm":
        return ctx.load(checkout, "norm.py", "official_norm").Norm(model)
    tent = ctx.load(checkout, "tent.py", "official_tent")
    model = tent.configure_model(model)
    params, _ = tent.collect_params(model)
    hp = ctx.hparams
    optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta, 0.999), weight_decay=hp.weight_decay)
    return tent.Tent(model, optimizer, steps=hp.steps, episodic=False)


METHODS = {"source": setup, "norm": setup, "tent": setup}
