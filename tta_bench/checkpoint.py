"""Run checkpoints: method state, stream state and RNG states at domain boundaries, written atomically.

A checkpoint is one `torch.save` file of tensors and plain numbers (no pickled objects), read back
with `torch.load(weights_only=True)`. It is tied to its run by the run id (a hash of the semantic
config) and the weights fingerprint; one that does not match is ignored with a note.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tta_bench.methods.base import Method
from tta_bench.results import atomic_write
from tta_bench.runner import StreamState

FORMAT = 1
FILE_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and every CUDA device, as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class RunCheckpoint:
    """The checkpoint file of one run."""

    def __init__(self, run_dir: Path, run_id: str, weights_sha256: str):
        self.path = Path(run_dir) / FILE_NAME
        self.identity = {"format": FORMAT, "run_id": run_id, "weights_sha256": weights_sha256}

    def save(self, method: Method, stream: StreamState, extra: dict[str, Any]) -> None:
        """Write the full state atomically (the previous checkpoint stays valid until the rename)."""
        payload = {**self.identity, "method": method.state_dict(), "stream": stream.state_dict(),
                   "rng": rng_state(), "extra": extra}
        try:
            atomic_write(self.path, lambda tmp: torch.save(payload, tmp))
        except OSError as exc:  # e.g. a full disk: the run itself can still finish
            print(f"note: could not write checkpoint {self.path} ({exc}); continuing without it")

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The saved payload, or None when there is none or it belongs to another run (with a note)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a damaged file must not stop the run: it starts over instead
            print(f"note: ignoring unreadable checkpoint {self.path} ({type(exc).__name__}: {exc}); starting over")
            return None
        mismatched = [k for k, v in self.identity.items() if payload.get(k) != v]
        if mismatched:
            print(f"note: ignoring checkpoint {self.path}: different {', '.join(mismatched)}; starting over")
            return None
        return payload

    def remove(self) -> None:
        """Delete the checkpoint (the run is complete, or is forced to start over)."""
        self.path.unlink(missing_ok=True)


def restore(payload: dict[str, Any], method: Method, stream: StreamState) -> None:
    """Load a checkpoint's method, stream and RNG states."""
    method.load_state_dict(payload["method"])
    stream.load_state_dict(payload["stream"])
    set_rng_state(payload["rng"])
