"""Cached preparation steps on source data (EATA's Fisher, RMT's prototypes, ...).

The artefacts a method computes from source data are stored under `<model_dir>/preparation/`,
keyed by the method's name and hyperparameters, the source model's weights and the source data,
so a sweep computes them once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.methods.base import Method


@dataclass
class SourceData:
    """Clean labelled source images (n, H, W, 3) uint8, named for the cache key."""

    images: np.ndarray
    labels: np.ndarray
    name: str

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float NCHW [0,1] batches with labels, in file order, on `device`."""
        for start in range(0, len(self.images), batch_size):
            x = as_float(to_nchw(self.images[start : start + batch_size], device))
            yield x, torch.from_numpy(self.labels[start : start + batch_size]).to(device)


def preparation_key(method: Method, weights_hash: str, source_name: str) -> str:
    """Cache key of a method's preparation artefacts."""
    blob = json.dumps({"method": method.name, "hparams": dataclasses.asdict(method.hparams),
                       "weights": weights_hash, "source": source_name}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_method(method: Method, source: SourceData, cache_dir: Path, weights_hash: str,
                   progress: bool = True) -> Path:
    """Give the method the source data, load or compute its artefacts, install them, snapshot the state."""
    method.attach_source(source)
    path = Path(cache_dir) / f"{method.name}-{preparation_key(method, weights_hash, source.name)}.pt"
    if path.is_file():
        artefacts = torch.load(path, map_location="cpu", weights_only=True)
    else:
        artefacts = {k: v.detach().cpu() for k, v in method.compute_preparation(source, progress).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(artefacts, tmp)
        os.replace(tmp, path)
    method.load_preparation(artefacts)
    method.snapshot()
    return path
