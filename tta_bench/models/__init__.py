"""Model registry: `create_model(name)` returns a source model with its weights loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tta_bench.errors import ConfigError

ModelFactory = Callable[[Path, Path, bool], nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory `(model_dir, data_root, progress) -> model` under `name`."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        _MODELS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model` (and by `model=` in configs)."""
    return sorted(_MODELS)


def create_model(name: str, model_dir: str | Path = "models", data_root: str | Path = "data",
                 progress: bool = True) -> nn.Module:
    """The source model `name` in eval mode with its weights loaded (inputs NCHW in [0,1])."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    return _MODELS[name](Path(model_dir), Path(data_root), progress).eval()


@register_model("digits_c")
def _digits_c(model_dir: Path, data_root: Path, progress: bool) -> nn.Module:
    from tta_bench.models.digits import load_or_train_digits_model

    return load_or_train_digits_model(model_dir, data_root, progress)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state dict, for provenance and cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
