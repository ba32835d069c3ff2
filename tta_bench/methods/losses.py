"""Losses shared by methods."""

from __future__ import annotations

import torch


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits) over dim 1."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of softmax(logits) against the soft target softmax(target_logits)."""
    return -(target_logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-sample (1 - alpha) * CE(logits; target) + alpha * CE(target; logits), as CoTTA (ImageNet) and RMT."""
    return ((1 - alpha) * soft_cross_entropy(logits, target_logits)
            + alpha * soft_cross_entropy(target_logits, logits))
