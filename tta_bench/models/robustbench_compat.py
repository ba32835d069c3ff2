"""The one place that imports robustbench 1.1.1, working around two packaging defects of its wheel.

Upstream defects of robustbench 1.1.1 (PyPI), both in import-time code we never call:

1. `robustbench/loaders.py` does `import pkg_resources`, which setuptools >= 82 no longer ships.
   It only uses `pkg_resources.resource_filename(__name__, path)`, so when the real module is
   missing we provide a minimal stand-in for the duration of the import. We chose this over
   pinning `setuptools<82`: a pin would make a build tool a runtime dependency of tta_bench, and
   `pip install -c constraints.txt` does not downgrade an already-installed setuptools anyway.
2. `robustbench/eval.py` does `from autoattack import AutoAttack` (and `autoattack.state`), but its
   declared dependency `pyautoattack` installs the module as `pyautoattack`. We alias the module
   names for the duration of the import.

Both stand-ins are removed from `sys.modules` afterwards so no other package sees them; robustbench
keeps its own references. If the real modules are importable, they are used unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

from tta_bench.errors import TTABenchError

ROBUSTBENCH_VERSION = "1.1.1"


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _resource_filename(package_or_module: str, resource: str) -> str:
    """What `pkg_resources.resource_filename` returns for a file inside an installed package."""
    module = importlib.import_module(package_or_module)
    base = os.path.dirname(module.__file__ or "")
    return os.path.join(base, *resource.split("/"))


def _pkg_resources_shim() -> types.ModuleType:
    shim = types.ModuleType("pkg_resources")
    shim.__doc__ = "tta_bench stand-in: only resource_filename, for robustbench 1.1.1's loaders.py."
    shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
    return shim


@contextlib.contextmanager
def _temporary_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """Put `modules` into sys.modules while the block runs, then take them out again."""
    added = {name: mod for name, mod in modules.items() if name not in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, mod in added.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _stand_ins() -> dict[str, types.ModuleType]:
    """The stand-in modules the running environment needs (none when the real ones import)."""
    modules: dict[str, types.ModuleType] = {}
    if not _importable("pkg_resources"):  # defect 1
        modules["pkg_resources"] = _pkg_resources_shim()
    if not _importable("autoattack"):  # defect 2
        pyautoattack = importlib.import_module("pyautoattack")
        modules["autoattack"] = pyautoattack
        modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
    return modules


def _quiet_third_party_import_warnings() -> None:
    """Silence import-time deprecation warnings of robustbench's dependencies; nothing a user can act on."""
    # timm 1.0.9 (hrnet.py) uses the deprecated torch.jit.interface.
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)
    # robustbench 1.1.1 imports timm through module paths timm marks deprecated.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"timm(\..*)?")
    # setuptools 81 warns when pkg_resources (defect 1) is imported at all.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def import_robustbench() -> types.ModuleType:
    """Import robustbench (with `robustbench.model_zoo`) despite the defects above."""
    if "robustbench.model_zoo" in sys.modules:
        return sys.modules["robustbench"]
    try:
        with warnings.catch_warnings():
            _quiet_third_party_import_warnings()
            with _temporary_modules(_stand_ins()):
                robustbench = importlib.import_module("robustbench")
                importlib.import_module("robustbench.model_zoo")
    except ImportError as exc:
        raise TTABenchError(
            f"cannot import robustbench ({exc}); the RobustBench models need robustbench=="
            f"{ROBUSTBENCH_VERSION} and pyautoattack: run `make install` (or `pip install -c "
            "constraints.txt -e .`)"
        ) from exc
    return robustbench


def model_zoo_entry(dataset: str, threat_model: str, name: str) -> dict[str, Any]:
    """robustbench's model-zoo entry (`model` factory, `gdrive_id`) for e.g. cifar10/corruptions/Standard."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name]
