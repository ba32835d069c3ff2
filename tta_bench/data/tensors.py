"""Image array conventions: files hold uint8 (n, H, W, 3); models take float NCHW in [0,1]."""

from __future__ import annotations

import numpy as np
import torch


def to_nchw(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, H, W, 3) uint8 host array -> contiguous (n, 3, H, W) uint8 tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch -> float32 in [0,1], on the batch's device (a new tensor)."""
    return batch.float().div_(255.0)
