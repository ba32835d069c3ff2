"""Model registry: `create_model(name)` returns a source model with its weights loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tta_bench.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, tuple[ModelFactory, dict[str, Any]]] = {}


def register_model(name: str, **options: Any) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory `(model_dir, data_root, progress, **options) -> model` under `name`.

    `options` are the model-config fields the factory accepts, with their defaults; the factory sets
    `model.weights_id`, a provenance identifier of the weights (e.g. "torchvision:resnet50/IMAGENET1K_V1").
    """

    def wrap(factory: ModelFactory) -> ModelFactory:
        _MODELS[name] = (factory, options)
        return factory

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model` (and by `model=` in configs)."""
    return sorted(_MODELS)


def create_model(name: str, model_dir: str | Path = "models", data_root: str | Path = "data",
                 progress: bool = True, **options: Any) -> nn.Module:
    """The source model `name` in eval mode with its weights loaded (inputs NCHW in [0,1])."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    factory, defaults = _MODELS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; valid: {valid}")
    model = factory(Path(model_dir), Path(data_root), progress, **{**defaults, **options})
    if not isinstance(getattr(model, "weights_id", None), str):
        raise TypeError(f"model factory {name!r} did not set model.weights_id")
    return model.eval()


@register_model("digits_c")
def _digits_c(model_dir: Path, data_root: Path, progress: bool) -> nn.Module:
    from tta_bench.models.digits import GENERATOR_VERSION, load_or_train_digits_model

    model = load_or_train_digits_model(model_dir, data_root, progress)
    model.weights_id = f"tta_bench:digits_c/v{GENERATOR_VERSION}"
    return model


@register_model("wrn28_10_standard")
def _wrn28_10_standard(model_dir: Path, data_root: Path, progress: bool) -> nn.Module:
    from tta_bench.models.zoo import load_robustbench

    return load_robustbench(model_dir, "cifar10", "corruptions", "Standard", "WideResNet-28-10")


@register_model("resnext29_augmix")
def _resnext29_augmix(model_dir: Path, data_root: Path, progress: bool) -> nn.Module:
    from tta_bench.models.zoo import load_robustbench

    # The published file lacks the constant mu/sigma buffers (robustbench loads it non-strictly for that).
    return load_robustbench(model_dir, "cifar100", "corruptions", "Hendrycks2020AugMix_ResNeXt",
                            "ResNeXt-29 4x32d", optional_keys=("mu", "sigma"))


@register_model("resnet50", weights="IMAGENET1K_V1")
def _resnet50(model_dir: Path, data_root: Path, progress: bool, weights: str) -> nn.Module:
    from tta_bench.models.zoo import load_torchvision

    return load_torchvision("resnet50", weights)


@register_model("vit_b16", weights="IMAGENET1K_V1")
def _vit_b16(model_dir: Path, data_root: Path, progress: bool, weights: str) -> nn.Module:
    from tta_bench.models.zoo import load_torchvision

    return load_torchvision("vit_b_16", weights)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state dict, for provenance and cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
