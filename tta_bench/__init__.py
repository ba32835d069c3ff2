"""tta_bench: a reproducible benchmark harness for test-time adaptation of image classifiers.

Library use without Hydra::

    import tta_bench
    model = tta_bench.create_model("digits_c")
    tent = tta_bench.create_method("tent", model)  # official CIFAR-like defaults
    x, y = tta_bench.load_domain("digits_c", "fog", 5, n_examples=200)
"""

from tta_bench.data.datasets import load_domain
from tta_bench.methods import Method, create_method, list_methods, register_method
from tta_bench.models import create_model, list_models

__all__ = ["Method", "create_method", "create_model", "list_methods", "list_models", "load_domain",
           "register_method"]
__version__ = "0.1.0"
