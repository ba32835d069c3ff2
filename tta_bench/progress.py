"""Progress bars shared by data generation, training and the runner."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that redraws at most twice a second; off when disabled or when stderr is not a
    terminal (cluster and submitit job logs)."""
    return tqdm(disable=None if enabled else True, mininterval=0.5, dynamic_ncols=True, **kwargs)
