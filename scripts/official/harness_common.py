"""Shared import plumbing of the adapters for mariodoebler/test-time-adaptation (rmt, roid, harness_bn).

Not an adapter (compare_official.py skips `*_common.py`). The checkout's `classification/` code is
imported unmodified; at runtime only its imports are adapted:
- `yacs` and `iopath` (conf.py's imports) are replaced by a minimal attribute-dict CfgNode when they
  are not installed; conf.py is then imported for its defaults.
- the packages `methods`, `utils`, `augmentations` are registered without running their `__init__`
  (`methods/__init__.py` imports every method and with it the model zoo).
- `models.model` (timm, open_clip, robustbench model zoo) is replaced by a stub providing the
  `ResNetDomainNet126` class the methods test with isinstance and `split_up_model`, which splits the
  digits_c SmallResNet into `features` (encoder) and `fc` (classifier), sharing its parameters.
- `datasets.data_loading` (webdataset, torchvision dataset classes) is replaced by a stub whose
  `get_source_loader` is None; an adapter that needs source data sets it on the importing module.
Modules are imported once per process (the checkout's method registry is global), shared by all adapters.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import torch
import yaml

from common import Context

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


class _Features(torch.nn.Module):
    """The model's penultimate features (its `features` method), sharing the model's parameters."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def split_up_model(model: torch.nn.Module, arch_name: str, dataset_name: str):
    """Stand-in for models.model.split_up_model: (encoder, classifier) of the digits_c SmallResNet."""
    return _Features(model), model.fc


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An empty (stub) package, optionally searching `path` for its submodules."""
    module = sys.modules.get(name)
    if module is None:
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
    models.model.split_up_model = split_up_model
    sys.modules["models.model"] = models.model
    datasets = _package("datasets", root / "datasets")
    datasets.data_loading = types.ModuleType("datasets.data_loading")
    datasets.data_loading.get_source_loader = None
    sys.modules["datasets.data_loading"] = datasets.data_loading


def classification_root(checkout: Path) -> Path:
    """The checkout's `classification/` folder (the repository root or that folder may be passed)."""
    checkout = Path(checkout)
    return checkout / "classification" if (checkout / "classification").is_dir() else checkout


def load(checkout: Path, relative_path: str) -> types.ModuleType:
    """`relative_path` of `classification/` (e.g. "methods/roid.py" as methods.roid), imported once per process."""
    if relative_path not in _LOADED:
        root = classification_root(checkout)
        if not _LOADED:
            _install_import_stubs(root)
        module_name = relative_path.removesuffix(".py").replace("/", ".")
        _LOADED[relative_path] = Context.load(root, relative_path, module_name)
    return _LOADED[relative_path]


def _merge(node, values: dict) -> None:
    """Overwrite `node` with a nested dict (yacs' merge without its type checks)."""
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(node[key], value)
        else:
            node[key] = value


def make_cfg(checkout: Path, method_yaml: str, ctx: Context, overrides: dict):
    """conf.py defaults + cfgs/cifar10_c/<method_yaml> + the shared tta_bench hparams + `overrides`."""
    cfg = load(checkout, "conf.py")._CFG_DEFAULT.clone()
    if hasattr(cfg, "defrost"):
        cfg.defrost()
    _merge(cfg, yaml.safe_load((classification_root(checkout) / "cfgs/cifar10_c" / method_yaml).read_text()))
    hp = ctx.hparams
    _merge(cfg, {
        "OPTIM": {"METHOD": {"adam": "Adam", "sgd": "SGD"}[hp.optimizer], "LR": hp.lr, "BETA": hp.beta,
                  "MOMENTUM": hp.momentum, "DAMPENING": hp.dampening, "NESTEROV": hp.nesterov,
                  "WD": hp.weight_decay, "STEPS": hp.steps},
        "TEST": {"BATCH_SIZE": ctx.batch_size},
        "MODEL": {"EPISODIC": False, "RESET_AFTER_NUM_UPDATES": 0},
        "MIXED_PRECISION": False,
    })
    _merge(cfg, overrides)
    return cfg
