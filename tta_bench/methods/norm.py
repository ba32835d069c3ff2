"""Norm (BN-adapt, test-time normalisation)."""

from __future__ import annotations

from tta_bench.methods.base import Method
from tta_bench.methods.norm_layers import use_batch_statistics
from tta_bench.methods.registry import register_method


@register_method("norm")
class Norm(Method):
    """Normalise every BatchNorm layer with the statistics of the current test batch.

    Paper: Schneider et al., "Improving robustness against common corruptions by covariate shift
    adaptation" (NeurIPS 2020); Nado et al. (2020). Official code: DequanWang/tent `norm.py`.
    Nothing is trained; the rest of the model stays in eval mode.

    Deviation: the official `Norm` puts BN layers in train mode, which also updates the running
    statistics with momentum 0.1 although they are never read; here running statistics are
    dropped instead (the official `no_stats=True` branch). Predictions are identical and the
    state does not drift during frozen evaluation. Covers every BatchNorm (1d/2d/3d), not only 2d.
    """

    def configure_model(self) -> None:
        """Eval mode with batch-statistics BN."""
        self.model.eval().requires_grad_(False)
        use_batch_statistics(self.model)
