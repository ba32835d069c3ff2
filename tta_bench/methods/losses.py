"""Losses shared by methods."""

from __future__ import annotations

import torch


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits) over dim 1."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
