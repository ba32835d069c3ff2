"""Peak memory of one run: CUDA allocator peak, or the process's resident-set high-water mark."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> bool:
    """Start this run's peak-memory window; False where the platform cannot reset it.

    Without a reset, a Hydra multirun (one process, jobs in sequence) would report the largest
    peak of every earlier job: CUDA peak statistics and the RSS high-water mark only ever grow.
    On Linux, writing 5 to /proc/self/clear_refs resets the RSS high-water mark to the current RSS.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not permitted: the peak then covers the process so far
        return False
    return True


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA) or peak resident memory of this process (CPU) in MiB since the reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux KiB; reached only off Linux
