"""lame from fiveai/LAME (`src/adaptation/lame.py`: `LAME.run_step`, the affinities, `laplacian_optimization`).

The official module belongs to a detectron-style package: it imports `NonAdaptiveMethod` and
`ADAPTER_REGISTRY` relatively, which pull in the whole framework (data catalogs, events, ...).
At runtime this adapter gives it two stub siblings (a plain base class and a registry whose
`register()` returns the class unchanged) and executes the unmodified file. The official
`LAME.run_step` then runs as is on a stand-in `self` whose `model(batched_inputs)` returns
{"probas": softmax(logits)} and exposes the penultimate features as `model.backbone.out` (what the
official Classifier does: global-average-pooled backbone output), and whose `format_result`
returns the probabilities. The kernel and `force_symmetry` come from the official constructor's
expressions on the tta_bench hparams (affinity, knn; LAME_SIGMA 1.0 is passed but unused).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections import defaultdict
from pathlib import Path

import torch

from common import Context

CHECKOUT = "fiveai/LAME"
STOCHASTIC: set[str] = set()
PACKAGE = "official_lame_adaptation"


def load_official_lame(checkout: Path) -> types.ModuleType:
    """Execute the checkout's src/adaptation/lame.py with stub `.non_adaptive` and `.build` siblings."""
    if f"{PACKAGE}.lame" in sys.modules:
        return sys.modules[f"{PACKAGE}.lame"]
    package = types.ModuleType(PACKAGE)
    package.__path__ = []
    non_adaptive = types.ModuleType(f"{PACKAGE}.non_adaptive")
    non_adaptive.NonAdaptiveMethod = type("NonAdaptiveMethod", (), {})
    build = types.ModuleType(f"{PACKAGE}.build")
    build.ADAPTER_REGISTRY = types.SimpleNamespace(register=lambda: (lambda cls: cls))
    sys.modules.update({PACKAGE: package, non_adaptive.__name__: non_adaptive, build.__name__: build})
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.lame", Path(checkout) / "src/adaptation/lame.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class OfficialClassifier:
    """What `LAME.run_step` reads of the official Classifier, built on the digits_c model."""

    def __init__(self, model: torch.nn.Module):
        self.net = model.eval().requires_grad_(False)
        self.backbone = types.SimpleNamespace(out=None)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.net.features(images)  # global-average-pooled, the input of fc
        self.backbone.out = feats.detach()
        return {"probas": self.net.fc(feats).softmax(-1)}

    @staticmethod
    def format_result(batched_inputs: torch.Tensor, probas: torch.Tensor) -> torch.Tensor:
        """The official version wraps the probabilities into detectron Instances; keep them as they are."""
        return probas


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official LAME step on the model; returns probabilities."""
    lame = load_official_lame(checkout)
    hp = ctx.hparams
    if (hp.bound_lambda, hp.max_steps, hp.tol) != (1.0, 100, 1e-8):
        raise ValueError("the official laplacian_optimization is called with its defaults (lambda 1, 100 steps, 1e-8)")
    state = types.SimpleNamespace(
        model=OfficialClassifier(model),
        affinity=getattr(lame, f"{hp.affinity}_affinity")(sigma=1.0, knn=hp.knn),
        force_symmetry=hp.force_symmetry,
        metric_hook=types.SimpleNamespace(scalar_dic=defaultdict(list)),
    )
    return lambda images: lame.LAME.run_step(state, images)


METHODS = {"lame": setup}
