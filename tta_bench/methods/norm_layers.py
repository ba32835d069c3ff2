"""Normalisation-layer configuration shared by methods (batch statistics, affine parameters)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BatchNorm normalise with the current batch's mean and biased variance.

    As in the official Tent code: running statistics are dropped (track_running_stats=False,
    buffers None), so train and eval mode both use batch statistics and nothing is accumulated.
    """
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None


def norm_affine_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the affine scale and shift of every BN/LN/GN layer."""
    out = []
    for module_name, m in model.named_modules():
        if isinstance(m, NORM_LAYERS):
            for pname, p in m.named_parameters(recurse=False):
                if pname in ("weight", "bias"):
                    out.append((f"{module_name}.{pname}", p))
    return out
