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
runtime only imports and data/model plumbing are adapted (harness_common.py: yacs/iopath stand-ins,
packages registered without their `__init__`, `models.model` stub whose `split_up_model` splits the
digits_c SmallResNet into `features` and `fc`, `datasets.data_loading` stub). The `get_source_loader`
RMT imported is replaced per set-up by a shuffled DataLoader (drop_last False, no workers, no
transform) over ctx.source, the clean digits_c train split, with the batch size the official code asks for.
No CUDA-only call is on RMT's path: the device falls back to "cpu" and mixed precision is off.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

import harness_common
from common import Context

CHECKOUT = "mariodoebler/test-time-adaptation"
STOCHASTIC = {"rmt", "rmt_source_free"}
_CKPT_DIRS: dict[str, str] = {}


def make_cfg(checkout: Path, ctx: Context, ckpt_dir: str):
    """conf.py defaults + cfgs/cifar10_c/rmt.yaml + the tta_bench hparams of this comparison."""
    hp = ctx.hparams
    if hp.source_batch_size != ctx.batch_size or hp.prototype_samples != 100000:
        raise ValueError("the official RMT uses the test batch size for source batches and 100,000 prototype samples")
    return harness_common.make_cfg(checkout, "rmt.yaml", ctx, {
        "M_TEACHER": {"MOMENTUM": hp.teacher_momentum},
        "CONTRAST": {"TEMPERATURE": hp.temperature, "PROJECTION_DIM": hp.projection_dim, "MODE": "all"},
        "RMT": {"LAMBDA_CE_SRC": hp.lambda_ce_src, "LAMBDA_CE_TRG": hp.lambda_ce_trg,
                "LAMBDA_CONT": hp.lambda_cont, "NUM_SAMPLES_WARM_UP": hp.warmup_samples},
        "TEST": {"WINDOW_LENGTH": 1},
        "MODEL": {"ADAPTATION": "rmt", "ARCH": "Standard"},
        "CORRUPTION": {"DATASET": "cifar10_c"},
        "SOURCE": {"NUM_WORKERS": 0},
        "CKPT_DIR": ckpt_dir,
    })


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
    rmt = harness_common.load(checkout, "methods/rmt.py")
    if name not in _CKPT_DIRS:
        _CKPT_DIRS[name] = tempfile.mkdtemp(prefix=f"official_{name}_")
        atexit.register(shutil.rmtree, _CKPT_DIRS[name], True)
    rmt.get_source_loader = source_loader_over(ctx)
    model.model_preprocess = None  # set by the harness's get_model (None for RobustBench CIFAR models)
    return rmt.RMT(make_cfg(checkout, ctx, _CKPT_DIRS[name]), model, ctx.num_classes)


METHODS = {"rmt": setup, "rmt_source_free": setup}
