"""rmt and rmt_source_free from mariodoebler/test-time-adaptation (`classification/methods/rmt.py`).

Pass the repository root or its `classification/` folder as --checkout rmt=PATH. The official RMT class
(with its TTAMethod base, CoTTA transforms, SymmetricCrossEntropy and ema_update_model) is built around
the digits_c model with a cfg made of conf.py's defaults, cfgs/cifar10_c/rmt.yaml and the effective
tta_bench hparams (optimizer, steps, lambdas, teacher momentum, contrastive options, warm-up samples;
rmt_source_free = LAMBDA_CE_SRC 0 and NUM_SAMPLES_WARM_UP 0, the harness's documented source-free
option). CORRUPTION.DATASET is "cifar10_c" so the base class picks the 32x32 image size of the
augmentation; CKPT_DIR is a temporary folder per method and process, so, as the official code does
across runs, prototypes and the warm-up are computed for the first seed and loaded for the others
(compare_official.py caches the tta_bench side's preparation the same way). Nothing of the checkout's logic is changed; at
runtime only imports and data/model plumbing are adapted:
- `yacs` and `iopath` (conf.py's imports) are replaced by a minimal attribute-dict CfgNode when they
  are not installed; conf.py is then imported for its defaults.
- `models.model` (timm, open_clip, robustbench model zoo) is replaced by a stub that provides the
  `ResNetDomainNet126` class the base tests with isinstance and `split_up_model`, which splits the
  digits_c SmallResNet into `features` (encoder) and `fc` (classifier), sharing its parameters.
- `datasets.data_loading` (webdataset, torchvision dataset classes) is replaced by a stub whose
  `get_source_loader` returns a shuffled DataLoader (drop_last False, no workers, no transform) over
  ctx.source, the clean digits_c train split, with the batch size the official code asks for.
- the packages `methods`, `utils`, `augmentations` are registered without running their `__init__`.
No CUDA-only call is on RMT's path: the device falls back to "cpu" and mixed precision is off.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
import yaml

from common import Context

CHECKOUT = "mariodoebler/test-time-adaptation"
STOCHASTIC = {"rmt", "rmt_source_free"}
_LOADED: dict[str, types.ModuleType] = {}
_CKPT_DIRS: dict[str, str] = {}


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
    model_stub = sys.modules.setdefault("models.model", types.ModuleType("models.model"))
    if not hasattr(model_stub, "ResNetDomainNet126"):
        model_stub.ResNetDomainNet126 = type("ResNetDomainNet126", (torch.nn.Module,), {})
    model_stub.split_up_model = split_up_model
    models.model = model_stub
    datasets = _package("datasets", root / "datasets")
    datasets.data_loading = types.ModuleType("datasets.data_loading")
    datasets.data_loading.get_source_loader = None  # set per set-up to a loader over ctx.source
    sys.modules["datasets.data_loading"] = datasets.data_loading


def _load(checkout: Path) -> dict:
    """conf.py and methods/rmt.py of the checkout, imported once per process (its registry is global)."""
    if not _LOADED:
        root = checkout / "classification" if (checkout / "classification").is_dir() else checkout
        _install_import_stubs(root)
        _LOADED["root"] = types.SimpleNamespace(path=root)
        _LOADED["conf"] = Context.load(root, "conf.py", "conf")
        _LOADED["rmt"] = Context.load(root, "methods/rmt.py", "methods.rmt")
    return _LOADED


def _merge(node, values: dict) -> None:
    """Overwrite `node` with a nested dict (yacs' merge without its type checks)."""
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(node[key], value)
        else:
            node[key] = value


def make_cfg(loaded: dict, name: str, ctx: Context, ckpt_dir: str):
    """conf.py defaults + cfgs/cifar10_c/rmt.yaml + the tta_bench hparams of this comparison."""
    hp = ctx.hparams
    if hp.source_batch_size != ctx.batch_size or hp.prototype_samples != 100000:
        raise ValueError("the official RMT uses the test batch size for source batches and 100,000 prototype samples")
    cfg = loaded["conf"]._CFG_DEFAULT.clone()
    if hasattr(cfg, "defrost"):
        cfg.defrost()
    _merge(cfg, yaml.safe_load((loaded["root"].path / "cfgs/cifar10_c/rmt.yaml").read_text()))
    _merge(cfg, {
        "OPTIM": {"METHOD": {"adam": "Adam", "sgd": "SGD"}[hp.optimizer], "LR": hp.lr, "BETA": hp.beta,
                  "MOMENTUM": hp.momentum, "DAMPENING": hp.dampening, "NESTEROV": hp.nesterov,
                  "WD": hp.weight_decay, "STEPS": hp.steps},
        "M_TEACHER": {"MOMENTUM": hp.teacher_momentum},
        "CONTRAST": {"TEMPERATURE": hp.temperature, "PROJECTION_DIM": hp.projection_dim, "MODE": "all"},
        "RMT": {"LAMBDA_CE_SRC": hp.lambda_ce_src, "LAMBDA_CE_TRG": hp.lambda_ce_trg,
                "LAMBDA_CONT": hp.lambda_cont, "NUM_SAMPLES_WARM_UP": hp.warmup_samples},
        "TEST": {"BATCH_SIZE": ctx.batch_size, "WINDOW_LENGTH": 1},
        "MODEL": {"ADAPTATION": "rmt", "ARCH": "Standard", "EPISODIC": False, "RESET_AFTER_NUM_UPDATES": 0},
        "CORRUPTION": {"DATASET": "cifar10_c"},
        "SOURCE": {"NUM_WORKERS": 0},
        "CKPT_DIR": ckpt_dir,
        "MIXED_PRECISION": False,
    })
    return cfg


def source_loader_over(ctx: Context):
    """A get_source_loader replacement: shuffled batches of the clean digits_c train images in [0,1]."""
    images = torch.from_numpy(ctx.source.images).permute(0, 3, 1, 2).float().div(255)
    dataset = torch.utils.data.TensorDataset(images, torch.from_numpy(ctx.source.labels))

    def get_source_loader(batch_size: int, **_):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=False)
        return dataset, loader

    return get_source_loader


def setup(name: str, model: torch.nn.Module, checkout: Path, ctx: Context):
    """The official RMT around `model`; prototypes and warm-up are cached in one folder per method name."""
    loaded = _load(Path(checkout))
    if name not in _CKPT_DIRS:
        _CKPT_DIRS[name] = tempfile.mkdtemp(prefix=f"official_{name}_")
        atexit.register(shutil.rmtree, _CKPT_DIRS[name], True)
    ckpt_dir = _CKPT_DIRS[name]
    loaded["rmt"].get_source_loader = source_loader_over(ctx)
    model.model_preprocess = None  # set by the harness's get_model (None for RobustBench CIFAR models)
    return loaded["rmt"].RMT(make_cfg(loaded, name, ctx, ckpt_dir), model, ctx.num_classes)


METHODS = {"rmt": setup, "rmt_source_free": setup}
