"""eta and eata from mr-eggplant/EATA (`eata.py`; the Fisher loop of `main.py` transcribed)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from common import Context

CHECKOUT = "mr-eggplant/EATA"
STOCHASTIC: set[str] = set()


def fishers_of(model: torch.nn.Module, ctx: Context) -> dict:
    """EATA main.py's Fisher loop: batches of 64 of 2,000 clean images, CE against the argmax."""
    hp = ctx.hparams
    n = min(hp.fisher_size, len(ctx.source.images))
    subset = type(ctx.source)(ctx.source.images[:n], ctx.source.labels[:n], ctx.source.name)
    fishers, batches = {}, list(subset.batches(hp.fisher_batch_size, torch.device("cpu")))
    for it, (x, _) in enumerate(batches, start=1):
        outputs = model(x)
        torch.nn.functional.cross_entropy(outputs, outputs.max(1)[1]).backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                fisher = param.grad.detach().clone() ** 2 + (fishers[name][0] if it > 1 else 0)
                if it == len(batches):
                    fisher = fisher / it
                fishers[name] = [fisher, param.detach().clone()]
        model.zero_grad()
    return fishers


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official EATA/ETA wrapper with tta_bench's effective hparams (Adam for the CIFAR preset)."""
    eata = ctx.load(checkout, "eata.py", "official_eata")
    hp = ctx.hparams
    model = eata.configure_model(model)
    params, _ = eata.collect_params(model)
    fishers = fishers_of(model, ctx) if name == "eata" else None
    if hp.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta, 0.999))
    else:
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum)
    alpha = hp.fisher_alpha if name == "eata" else 0.0
    return eata.EATA(model, optimizer, fishers, fisher_alpha=alpha,
                     e_margin=hp.e_margin_scale * math.log(ctx.num_classes), d_margin=hp.d_margin)


METHODS = {"eta": setup, "eata": setup}
