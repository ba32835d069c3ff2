"""The software and hardware a run ran on: versions, device, git commit, installed packages."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

SOURCE_DIR = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """Output of a git command in the source checkout, or None (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def installed_packages() -> list[str]:
    """`name==version` of every installed distribution, sorted (what `pip freeze` lists)."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return sorted(names, key=str.lower)


def device_name(device: torch.device) -> str:
    """GPU model for CUDA devices, else the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record(device: torch.device) -> dict[str, Any]:
    """Versions, device, git commit and dirtiness, and a hash of the installed packages."""
    packages = installed_packages()
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "device": str(device), "device_name": device_name(device),
        "git_commit": commit, "git_dirty": None if status is None else bool(status),
        "packages_sha256": hashlib.sha256("\n".join(packages).encode()).hexdigest(),
        "packages": packages,
    }
