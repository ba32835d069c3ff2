"""The digits_c source model: trained by the harness on the clean train split, cached in model_dir."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tta_bench.data.digits_c import GENERATOR_VERSION, load_clean_split
from tta_bench.models.resnet_small import SmallResNet
from tta_bench.progress import progress_bar

TRAIN_SEED = 0
EPOCHS = 14
BATCH_SIZE = 128
PEAK_LR = 0.1
CHECKPOINT = f"digits_c/small_resnet_v{GENERATOR_VERSION}.pt"


def build_digits_model() -> SmallResNet:
    """Architecture of the digits_c source model (random weights)."""
    return SmallResNet(num_classes=10)


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(0).tolist(), x.std(0).tolist()


def train_digits_model(data_root: Path, progress: bool = True) -> SmallResNet:
    """Train the source model on CPU with a fixed seed (SGD + one-cycle schedule)."""
    images, labels = load_clean_split(data_root, "train")
    mean, std = _channel_stats(images)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    with torch.random.fork_rng():
        torch.manual_seed(TRAIN_SEED)
        model = SmallResNet(num_classes=10, mean=tuple(mean), std=tuple(std))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    steps_per_epoch = len(x) // BATCH_SIZE
    opt = torch.optim.SGD(model.parameters(), PEAK_LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, PEAK_LR, total_steps=EPOCHS * steps_per_epoch, pct_start=0.15)
    model.train()
    bar = progress_bar(progress, total=EPOCHS * steps_per_epoch, desc="digits_c: training the source model")
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx].float() / 255.0), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return model.eval()


def load_or_train_digits_model(model_dir: Path, data_root: Path, progress: bool = True) -> SmallResNet:
    """Load the cached checkpoint, training it first if it is not there."""
    path = Path(model_dir) / CHECKPOINT
    if not path.is_file():
        # Trained on the CPU with fixed seeds: reruns on one machine give the same weights, and the cache
        # keeps them fixed across runs (other CPUs may round differently).
        state = train_digits_model(data_root, progress).state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
    model = build_digits_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
