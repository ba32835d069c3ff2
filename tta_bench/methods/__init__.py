"""Test-time adaptation methods; importing this package registers every built-in method."""

from tta_bench.methods import (  # noqa: F401  (registration side effect)
    bn_alpha, cotta, deyo, eata, lame, norm, rdumb, rmt, roid, rotta, sar, source, tent,
)
from tta_bench.methods.base import Method
from tta_bench.methods.registry import (
    create_method,
    list_methods,
    method_class,
    register_method,
)

__all__ = ["Method", "create_method", "list_methods", "method_class", "register_method"]
