"""RDumb: ETA with a full reset at a fixed interval."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tta_bench.methods.eata import CIFAR, ETA, IMAGENET, ETAHparams
from tta_bench.methods.registry import register_method


@dataclass(frozen=True)
class RDumbHparams(ETAHparams):
    """ETA's fields and the reset interval in batches."""

    reset_every: int = 1000


@register_method("rdumb")
class RDumb(ETA):
    """ETA, reset to the source state (weights, optimizer, moving average) every `reset_every` batches.

    Paper: Press et al., "RDumb: A simple approach that questions our progress in continual
    test-time adaptation" (NeurIPS 2023). Official code: oripress/CCC (`models/rdumb.py`), which
    hard-codes the ImageNet values: E0 = 0.4 ln 1000, d_margin 0.05, SGD 2.5e-4 momentum 0.9, and
    restores weights, optimizer state and the moving average before every 1,000th forward call.
    Defaults here: ETA's per benchmark family (see `eta`; CIFAR from the public harness), reset
    every 1,000 batches. The interval counts adaptation batches (forward calls), including those
    whose selection is empty, as the official `total_steps` does; resetting after batch k*1000 is
    the official reset before batch k*1000 + 1.
    """

    Hparams = RDumbHparams
    PRESETS = {"cifar": CIFAR, "imagenet": IMAGENET}

    def configure_model(self) -> None:
        """As ETA, with a batch counter."""
        super().configure_model()
        self.batches_seen = 0

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """ETA's step, then a full reset once `reset_every` batches have been adapted on."""
        outputs = super().forward_and_adapt(x)
        self.batches_seen += 1
        if self.batches_seen % self.hparams.reset_every == 0:
            self.reset()
        return outputs

    def state_dict(self) -> dict:
        """ETA's state and the batch counter."""
        return {**super().state_dict(), "batches_seen": self.batches_seen}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`."""
        super().load_state_dict(state)
        self.batches_seen = state["batches_seen"]
