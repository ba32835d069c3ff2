"""Progress bars shared by data generation, training and the runner."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that redraws at most twice a second (keeps logs of non-interactive runs short)."""
    return tqdm(disable=not enabled, mininterval=0.5, dynamic_ncols=True, **kwargs)
