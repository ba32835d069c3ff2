"""roid from mariodoebler/test-time-adaptation (`classification/methods/roid.py`, its TTAMethod base).

Pass the repository root or its `classification/` folder as --checkout roid=PATH. The official ROID
class is built around the digits_c model with a cfg made of conf.py's defaults, cfgs/cifar10_c/roid.yaml
and the effective tta_bench hparams (optimizer, steps, ROID options), TEST.BATCH_SIZE = the comparison
batch size. Nothing of the checkout's logic is changed; at runtime only imports are adapted:
- `yacs` and `iopath` (conf.py's imports) are replaced by a minimal attribute-dict CfgNode when they
  are not installed; conf.py is then imported for its defaults.
- `models.model` (timm, open_clip, robustbench model zoo) is replaced by a stub that only provides the
  `ResNetDomainNet126` class the methods test with isinstance; the packages `methods`, `utils` and
  `augmentations` are registered without running `methods/__init__.py` (which imports every method).
No CUDA-only call is on ROID's path: the device falls back to "cpu" and mixed precision is off.
`roid_no_consistency` runs tta_bench `roid` with use_consistency=False against ROID.USE_CONSISTENCY False
(deterministic); `roid` with the augmentation term is compared by mean error over seeds.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import torch
import yaml

from common import Context

CHECKOUT = "mariodoebler/test-time-adaptation"
STOCHASTIC = {"roid"}
OURS = {"roid_no_consistency": ("roid", {"use_consistency": False})}
_LOADED: dict[str, types.ModuleType] = {}


class _CfgNode(dict):
    """Attribute-access dict: the part of yacs' CfgNode that conf.py and the methods use."""

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __setattr__(self, key: str, value) -> None:
        self[key] = value

    def clone(self) -> "_CfgNode":
        return copy.deepcopy(self)

    def freeze(self) -> None:
        pass


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An empty (stub) package, optionally searching `path` for its submodules."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path else []
    sys.modules[name] = module
    return module


def _install_import_stubs(root: Path) -> None:
    """Packages of the checkout without their heavy imports (see the module docstring)."""
    try:
        import yacs.config  # noqa: F401
    except ImportError:
        _package("yacs").config = _package("yacs.config")
        sys.modules["yacs.config"].CfgNode = _CfgNode
    try:
        import iopath.common.file_io  # noqa: F401
    except ImportError:
        for name in ("iopath", "iopath.common"):
            _package(name)
        sys.modules["iopath.common.file_io"] = types.SimpleNamespace(g_pathmgr=None)
    for name in ("methods", "utils", "augmentations"):
        _package(name, root / name)
    models = _package("models", root / "models")
    models.model = types.ModuleType("models.model")
    models.model.ResNetDomainNet126 = type("ResNetDomainNet126", (torch.nn.Module,), {})
    sys.modules["models.model"] = models.model


def _load(checkout: Path) -> dict[str, types.ModuleType]:
    """conf.py and methods/roid.py of the checkout, imported once per process (its registry is global)."""
    if not _LOADED:
        root = checkout / "classification" if (checkout / "classification").is_dir() else checkout
        _install_import_stubs(root)
        _LOADED["root"] = types.SimpleNamespace(path=root)
        _LOADED["conf"] = Context.load(root, "conf.py", "conf")
        _LOADED["roid"] = Context.load(root, "methods/roid.py", "methods.roid")
    return _LOADED


def _merge(node, values: dict) -> None:
    """Overwrite `node` with a nested dict (yacs' merge without its type checks)."""
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(node[key], value)
        else:
            node[key] = value


def make_cfg(loaded: dict, ctx: Context):
    """conf.py defaults + cfgs/cifar10_c/roid.yaml + the tta_bench hparams of this comparison."""
    cfg = loaded["conf"]._CFG_DEFAULT.clone()
    if hasattr(cfg, "defrost"):
        cfg.defrost()
    _merge(cfg, yaml.safe_load((loaded["root"].path / "cfgs/cifar10_c/roid.yaml").read_text()))
    hp = ctx.hparams
    _merge(cfg, {
        "OPTIM": {"METHOD": {"adam": "Adam", "sgd": "SGD"}[hp.optimizer], "LR": hp.lr, "BETA": hp.beta,
                  "MOMENTUM": hp.momentum, "DAMPENING": hp.dampening, "NESTEROV": hp.nesterov,
                  "WD": hp.weight_decay, "STEPS": hp.steps},
        "ROID": {"USE_WEIGHTING": hp.use_weighting, "USE_PRIOR_CORRECTION": hp.use_prior_correction,
                 "USE_CONSISTENCY": hp.use_consistency, "MOMENTUM_SRC": hp.momentum_src,
                 "MOMENTUM_PROBS": hp.momentum_probs, "TEMPERATURE": hp.temperature},
        "TEST": {"BATCH_SIZE": ctx.batch_size},
        "MODEL": {"EPISODIC": False, "RESET_AFTER_NUM_UPDATES": 0},
        "MIXED_PRECISION": False,
    })
    return cfg


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official ROID around `model`; the comparison name only selects the hparams (see OURS)."""
    loaded = _load(Path(checkout))
    return loaded["roid"].ROID(make_cfg(loaded, ctx), model, ctx.num_classes)


METHODS = {"roid": setup, "roid_no_consistency": setup}
