"""Sharpness-aware minimisation (SAM) around any torch optimizer, as used by SAR.

Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization" (ICLR 2021);
the SAR code (mr-eggplant/SAR `sam.py`, from davda54/sam) splits a step in two: `first_step`
moves every parameter with a gradient to w + rho * g / (||g|| + 1e-12), with ||g|| the L2 norm over
all parameters together (ASAM: g scaled by |w| in the norm and by w^2 in the move); the caller then
computes the gradient at the perturbed point, and `second_step` restores w and lets the base
optimizer step with that gradient. Everything stays on the device (no host syncs).
"""

from __future__ import annotations

import torch


class SAM:
    """Two-step SAM update around `base` (which owns all persistent optimizer state)."""

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False):
        if rho < 0:
            raise ValueError(f"SAM rho must be non-negative, got {rho}")
        self.base, self.rho, self.adaptive = base, rho, adaptive
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for group in self.base.param_groups for p in group["params"] if p.grad is not None]

    def grad_norm(self) -> torch.Tensor:
        """L2 norm over all gradients together (|w|-scaled for ASAM)."""
        params = self._params_with_grad()
        return torch.stack([((p.abs() if self.adaptive else 1.0) * p.grad).norm(p=2) for p in params]).norm(p=2)

    @torch.no_grad()
    def first_step(self) -> None:
        """Remember w and climb to w + e(w); a zero gradient (empty selection) gives e = 0."""
        params = self._params_with_grad()
        if not params:
            self._saved = []
            return
        scale = self.rho / (self.grad_norm() + 1e-12)
        self._saved = [(p, p.detach().clone()) for p in params]
        for p in params:
            p.add_((p.pow(2) if self.adaptive else 1.0) * p.grad * scale.to(p))

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to w and step the base optimizer with the gradient taken at w + e(w)."""
        for p, saved in self._saved:
            p.copy_(saved)
        self._saved = []
        self.base.step()
