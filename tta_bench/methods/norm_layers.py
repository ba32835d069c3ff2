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


# SAR (mr-eggplant/SAR `collect_params`) leaves the top of the network frozen: ResNet's layer4,
# ViT-B's last three blocks and the final norm. DeYO copies the rule.
SAR_EXCLUDED_SUBSTRINGS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")


def sar_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Norm affine parameters except in modules named like layer4, blocks.9-11, norm.* or exactly norm.

    The test is the official substring match on the module name (so "blocks.9" also matches
    "blocks.90"; "norm." matches any module nested under a module called ...norm).
    """
    def excluded(module_name: str) -> bool:
        return module_name == "norm" or any(s in module_name for s in SAR_EXCLUDED_SUBSTRINGS)

    return [(n, p) for n, p in norm_affine_parameters(model) if not excluded(n.rsplit(".", 1)[0])]


def train_only(model: nn.Module, params: list[tuple[str, nn.Parameter]], train_mode: bool = True) -> None:
    """The Tent-style set-up: batch-statistics BN, gradients only for `params`, train (or eval) mode."""
    model.train(train_mode).requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    use_batch_statistics(model)
