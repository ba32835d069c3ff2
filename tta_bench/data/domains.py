"""Names and order of the corruption domains shared by CIFAR-10/100-C, ImageNet-C and digits_c."""

from __future__ import annotations

from dataclasses import dataclass

# The benchmark order of streams.md; RobustBench's CORRUPTIONS constant uses another order.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# Held-out corruptions for hyperparameter tuning; never part of the benchmark order.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CLEAN = "clean"


@dataclass(frozen=True)
class Domain:
    """One (corruption, severity) pair; `clean` has severity 0."""

    corruption: str
    severity: int

    @property
    def name(self) -> str:
        """Human-readable key such as `gaussian_noise@5`."""
        return f"{self.corruption}@{self.severity}"
