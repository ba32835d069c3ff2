"""Stop requests from signals: SIGTERM and SIGUSR1/2 (what SLURM sends before a time limit or pre-emption).

While a run streams, these signals only set `StopSignals.signum`; the runner checks it after each
batch, checkpoints and exits cleanly. A handler that was installed before (submitit's, which
requeues the job) is called afterwards, so `max_num_timeout` re-submission keeps working.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """Context manager that turns the stop signals into a polled request; handlers restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers need the main thread
            self.previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def forward(self) -> None:
        """Call the handler that was installed before for the received signal, if it is a Python one."""
        handler = self.previous.get(self.signum)
        if callable(handler):
            handler(self.signum, None)


def ignore_stop_signals(*args: Any) -> None:
    """Ignore the stop signals in this process (data-loader workers: the main process handles them)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
