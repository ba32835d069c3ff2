"""Online metrics accumulated on the device: error, NLL, Brier, ECE, collapse, divergence.

`update` runs once per batch and never synchronises with the host; `compute` copies the
accumulators to the host once (per domain or per run).
"""

from __future__ import annotations

import numpy as np
import torch

N_BINS = 15  # ECE bins of equal width over the confidence (metrics.md)
PROB_FLOOR = 1e-12  # keeps log(p) finite for methods that output exact zeros (LAME)


def probabilities_and_log(outputs: torch.Tensor, are_probabilities: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, log-probabilities) from logits or from probabilities."""
    outputs = outputs.float()
    if are_probabilities:
        probs = outputs / outputs.sum(1, keepdim=True)
        return probs, probs.clamp_min(PROB_FLOOR).log()
    logp = outputs.log_softmax(1)
    return logp.exp(), logp


def confidence_bins(confidence: torch.Tensor, n_bins: int = N_BINS) -> torch.Tensor:
    """Bin index of each confidence for bins (k/n, (k+1)/n], k = 0..n-1."""
    return (confidence * n_bins).ceil().long().sub(1).clamp(0, n_bins - 1)


class DomainMetrics:
    """Per-domain accumulators of every online metric, indexed by the domain id of each sample."""

    SUMS = ("n", "errors", "nll", "brier", "nonfinite", "nonfinite_step")
    TENSORS = ("sums", "bin_count", "bin_conf", "bin_correct", "pred_count")

    def __init__(self, n_domains: int, n_classes: int, device: torch.device, n_bins: int = N_BINS):
        self.n_domains, self.n_classes, self.n_bins = n_domains, n_classes, n_bins
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.sums = zeros(len(self.SUMS), n_domains)
        self.bin_count = zeros(n_domains * n_bins)
        self.bin_conf = zeros(n_domains * n_bins)
        self.bin_correct = zeros(n_domains * n_bins)
        self.pred_count = zeros(n_domains * n_classes)

    def update(self, outputs: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor,
               are_probabilities: bool = False, nonfinite_steps: torch.Tensor | None = None) -> torch.Tensor:
        """Add one batch; returns the number of errors in it (a device scalar).

        `nonfinite_steps`: the method's count of optimizer steps on this batch whose gradients were
        not finite (a device scalar; None for methods without an optimizer).
        """
        probs, logp = probabilities_and_log(outputs, are_probabilities)
        conf, pred = probs.max(1)
        wrong = pred.ne(labels).double()
        nll = -logp.gather(1, labels[:, None]).squeeze(1).double()
        brier = (probs - torch.nn.functional.one_hot(labels, self.n_classes)).pow(2).sum(1).double()
        nonfinite = (~torch.isfinite(outputs).all(1)).double()
        bad_step = torch.zeros_like(wrong) if nonfinite_steps is None else (nonfinite_steps > 0).double().expand_as(wrong)
        per_sample = torch.stack([torch.ones_like(wrong), wrong, nll, brier, nonfinite, bad_step])
        self.sums.index_add_(1, domain_ids, per_sample)
        cell = domain_ids * self.n_bins + confidence_bins(conf, self.n_bins)
        self.bin_count.index_add_(0, cell, torch.ones_like(wrong))
        self.bin_conf.index_add_(0, cell, conf.double())
        self.bin_correct.index_add_(0, cell, 1.0 - wrong)
        self.pred_count.index_add_(0, domain_ids * self.n_classes + pred, torch.ones_like(wrong))
        return wrong.sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the accumulators."""
        return {name: getattr(self, name).clone() for name in self.TENSORS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict` of accumulators of the same shape."""
        for name in self.TENSORS:
            getattr(self, name).copy_(state[name])

    def compute(self) -> dict[str, np.ndarray]:
        """Metric arrays of length n_domains + 1 on the host (last entry: all samples together).

        `diverged` is 1 for a domain with non-finite outputs or with a batch whose optimizer step
        saw non-finite gradients (a NaN/inf loss), else 0. One device-to-host copy; domains without samples give NaN. `reliability_*` are per
        confidence bin over all samples (sample count, mean confidence, accuracy) for reliability
        diagrams.
        """
        packed = torch.cat([self.sums.flatten(), self.bin_count, self.bin_conf,
                            self.bin_correct, self.pred_count]).cpu().numpy()
        d, b, s = self.n_domains, self.n_bins, len(self.SUMS)
        parts = np.split(packed, np.cumsum([s * d, d * b, d * b, d * b]))
        sums = _with_total(parts[0].reshape(s, d), axis=1)
        count, conf, correct = (_with_total(p.reshape(d, b), axis=0) for p in parts[1:4])
        preds = _with_total(parts[4].reshape(d, self.n_classes), axis=0)
        n = sums[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "n_samples": n,
                "error": sums[1] / n,
                "nll": sums[2] / n,
                "brier": sums[3] / n,
                "ece": np.abs(conf - correct).sum(1) / n,
                "collapse_share": preds.max(1) / n,
                "nonfinite_share": sums[4] / n,
                "nonfinite_step_share": sums[5] / n,
                # Non-finite outputs, or a non-finite gradient that reached an optimizer step.
                "diverged": ((sums[4] + sums[5]) > 0).astype(np.float64),
                "reliability_count": count[-1],
                "reliability_confidence": conf[-1] / count[-1],
                "reliability_accuracy": correct[-1] / count[-1],
            }


def _with_total(arr: np.ndarray, axis: int) -> np.ndarray:
    """Append the sum over `axis` as one more entry along that axis."""
    return np.concatenate([arr, arr.sum(axis=axis, keepdims=True)], axis=axis)
