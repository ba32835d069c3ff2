"""Source: the unadapted model."""

from __future__ import annotations

from tta_bench.methods.base import Method
from tta_bench.methods.registry import register_method


@register_method("source")
class Source(Method):
    """The source model in eval mode, no gradients, no updates (baseline of every TTA paper).

    Source: DequanWang/tent `setup_source` (model.eval()). No hyperparameters.
    """
