"""Pretrained reference models: RobustBench CIFAR models and torchvision ImageNet models, offline only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tta_bench.errors import ConfigError
from tta_bench.models.checkpoints import CheckpointSpec, load_checkpoint
from tta_bench.models.robustbench_compat import model_zoo_entry

GDRIVE_URL = "https://drive.google.com/uc?id={}"


class Normalized(nn.Module):
    """Applies per-channel (x - mean) / std before `model`, so callers pass images in [0,1]."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        # Buffers follow .to(device); non-persistent so the state dict stays the backbone's own.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def robustbench_spec(model_dir: Path, dataset: str, threat_model: str, name: str,
                     architecture: str, optional_keys: tuple[str, ...] = ()) -> CheckpointSpec:
    """Where robustbench's `load_model(name, model_dir, dataset, threat_model)` stores the checkpoint."""
    gdrive_id = model_zoo_entry(dataset, threat_model, name)["gdrive_id"]
    how = (f"Download it from {GDRIVE_URL.format(gdrive_id)} (the source robustbench's model zoo lists), or on "
           f"a machine with internet run `python -c \"from robustbench.utils import load_model; load_model("
           f"'{name}', model_dir='models', dataset='{dataset}', threat_model='{threat_model}')\"` and copy "
           f"models/{dataset}/{threat_model}/{name}.pt.")
    return CheckpointSpec(model_dir / dataset / threat_model / f"{name}.pt",
                          f"the RobustBench {dataset} {threat_model} model `{name}` ({architecture})", how,
                          optional_keys)


def load_robustbench(model_dir: Path, dataset: str, threat_model: str, name: str, architecture: str,
                     optional_keys: tuple[str, ...] = ()) -> nn.Module:
    """A RobustBench model-zoo architecture with its offline checkpoint loaded."""
    spec = robustbench_spec(model_dir, dataset, threat_model, name, architecture, optional_keys)
    model = load_checkpoint(model_zoo_entry(dataset, threat_model, name)["model"](), spec)
    model.weights_id = f"robustbench:{dataset}/{threat_model}/{name}"
    return model


def torchvision_weights(arch: str, weights: str):
    """torchvision's weights enum member `weights` of builder `arch` (a ConfigError if unknown)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    try:
        return enum[weights]
    except KeyError:
        valid = ", ".join(m.name for m in enum)
        raise ConfigError(f"unknown weights {weights!r} for {arch}; valid: {valid}") from None


def torchvision_spec(arch: str, weights) -> CheckpointSpec:
    """Where torchvision caches `weights` (the torch hub dir, $TORCH_HOME/hub/checkpoints)."""
    url = weights.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    how = (f"Download {url} (e.g. `curl -L -o {path} {url}`), or on a machine with internet and the same "
           f"TORCH_HOME run `python -c \"import torchvision; torchvision.models.{arch}(weights='{weights.name}')\"`.")
    return CheckpointSpec(path, f"torchvision {arch} weights {weights.name}", how)


def load_torchvision(arch: str, weights_name: str) -> nn.Module:
    """torchvision `arch` with cached `weights_name` loaded, normalising [0,1] inputs itself."""
    import torchvision.models as tvm

    weights = torchvision_weights(arch, weights_name)
    # Build with the weights' own geometry (e.g. ViT image_size) but without torchvision's download.
    kwargs = {"num_classes": len(weights.meta["categories"])}
    if arch.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    backbone = load_checkpoint(tvm.get_model(arch, weights=None, **kwargs), torchvision_spec(arch, weights))
    preprocess = weights.transforms()
    model = Normalized(backbone, tuple(preprocess.mean), tuple(preprocess.std))
    model.weights_id = f"torchvision:{arch}/{weights.name}"
    return model
