"""Offline checkpoint loading shared by every pretrained model: find, read safely, match strictly.

Rules: nothing is downloaded at run time; files are read with `torch.load(weights_only=True)` so a
checkpoint cannot run code; a bare state_dict or one nested under `state_dict`/`model` is accepted,
with `module.`/`model.` prefixes (DataParallel, wrappers) stripped; keys must match exactly.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tta_bench.errors import DataNotFoundError, TTABenchError

NESTED_KEYS = ("state_dict", "model")
PREFIXES = ("module.", "model.")
SHOWN_KEYS = 5


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a model's weights live offline, what they are, and how a user can obtain them."""

    path: Path
    description: str
    how_to_get: str
    # Keys the checkpoint may lack because the architecture sets them as constants (normalisation buffers).
    optional_keys: tuple[str, ...] = ()


def require_file(spec: CheckpointSpec) -> Path:
    """The checkpoint path, or a DataNotFoundError saying what is missing and how to get it."""
    if spec.path.is_file():
        return spec.path
    raise DataNotFoundError(
        f"Missing checkpoint {spec.path}: {spec.description}. The harness never downloads weights at "
        f"run time. {spec.how_to_get} Save the file exactly as {spec.path.resolve()}."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if "Unsupported global" in reason:
            raise TTABenchError(
                f"Refusing to load checkpoint {path}: it contains objects other than tensors and plain "
                f"containers, which torch.load(weights_only=True) does not unpickle ({reason}). Re-save it "
                "as a plain state_dict (torch.save(model.state_dict(), path)) from a trusted source."
            ) from exc
        raise _unreadable(path, reason) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError for truncated or foreign files
        raise _unreadable(path, f"{type(exc).__name__}: {exc}") from exc
    return _unwrap(obj, path)


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's long weights-only error message."""
    tail = message.split("WeightsUnpickler error:", 1)[-1].strip()
    return tail.split(". ", 1)[0].splitlines()[0].strip() if tail else message


def _unreadable(path: Path, reason: str) -> TTABenchError:
    return TTABenchError(f"Cannot read checkpoint {path} ({reason}); the file is damaged or not a "
                         "PyTorch checkpoint: download it again.")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint object (bare, or under one of NESTED_KEYS)."""
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TTABenchError(f"Checkpoint {path} holds a {type(obj).__name__} that is not a state_dict "
                            f"(a mapping of names to tensors, bare or under {' or '.join(NESTED_KEYS)!r}).")
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes from keys the model does not have as they are."""
    out = {}
    for key, value in state.items():
        while key not in expected and key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _mismatches(model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                optional: tuple[str, ...]) -> list[str]:
    """Human-readable lists of missing keys, unexpected keys and shape mismatches (empty if none)."""
    missing = [k for k in model_state if k not in state and k not in optional]
    unexpected = [k for k in state if k not in model_state]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in model_state.items()
              if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (file vs model)", shapes)):
        if items:
            more = f" and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:SHOWN_KEYS])}{more}")
    return problems


def load_checkpoint(model: nn.Module, spec: CheckpointSpec) -> nn.Module:
    """Load `spec`'s weights into `model` strictly, with user-facing errors; returns `model`."""
    path = require_file(spec)
    model_state = model.state_dict()
    state = _strip_prefixes(read_state_dict(path), set(model_state))
    problems = _mismatches(model_state, state, spec.optional_keys)
    if problems:
        raise TTABenchError(
            f"Checkpoint {path} does not fit {spec.description}: {'; '.join(problems)}. "
            "It is probably the checkpoint of another architecture; replace it with the right file. "
            f"{spec.how_to_get}"
        )
    # Constant buffers the file lacks keep the values the architecture set.
    state = {**{k: model_state[k] for k in spec.optional_keys if k not in state}, **state}
    model.load_state_dict(state, strict=True)
    return model
