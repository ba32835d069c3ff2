"""What an official-code adapter receives: the tta_bench hparams, source data and a module loader."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tta_bench.methods.preparation import SourceData


@dataclass
class Context:
    """Shared inputs of both sides of a comparison (use `hparams` on the official side too)."""

    hparams: Any
    source: SourceData
    num_classes: int
    batch_size: int
    seed: int

    @staticmethod
    def load(checkout: Path, relative_path: str, module_name: str) -> ModuleType:
        """Import `relative_path` of an official checkout as `module_name` (checkout put on sys.path)."""
        checkout = Path(checkout)
        for folder in (checkout, (checkout / relative_path).parent):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(module_name, checkout / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
