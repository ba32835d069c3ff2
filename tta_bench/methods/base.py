"""The method interface: configure the model, collect parameters, adapt-and-predict, reset."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from tta_bench.data.datasets import FAMILIES
from tta_bench.errors import ConfigError

OptimizerName = Literal["adam", "sgd"]


@dataclass(frozen=True)
class Hparams:
    """Hyperparameters shared by every method (none); subclasses add fields.

    A method whose official set-up fixes its own batch size (BN-alpha: 1) adds a field
    `batch_size: int | None`; when it is not None the runner uses it instead of data.batch_size
    (see `effective_batch_size`).
    """


@dataclass(frozen=True)
class OptimizerHparams(Hparams):
    """Optimizer fields; Adam betas (0.9, 0.999) and wd 0 as in the official code."""

    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    beta: float = 0.9
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    steps: int = 1


def effective_batch_size(hparams: Hparams, data_batch_size: int) -> int:
    """The method's own `batch_size` hyperparameter when it has one that is set, else the data's."""
    own = getattr(hparams, "batch_size", None)
    size = int(data_batch_size if own is None else own)
    if size < 1:
        raise ConfigError(f"batch size must be >= 1, got {size}")
    return size


def build_optimizer(params: list[nn.Parameter], hp: OptimizerHparams) -> torch.optim.Optimizer:
    """Adam or SGD over `params` as configured in `hp`."""
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta, 0.999), weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, dampening=hp.dampening,
                               weight_decay=hp.weight_decay, nesterov=hp.nesterov)
    raise ConfigError(f"unknown optimizer {hp.optimizer!r}; valid: adam, sgd")


class Method:
    """Base class of test-time adaptation methods.

    Subclasses set `Hparams` (a frozen dataclass) and `PRESETS` (official values per benchmark
    family), and override `configure_model`, `trainable_parameters` and `forward_and_adapt`.
    Methods with a source-data preparation step set `needs_source` and implement
    `compute_preparation` / `load_preparation`; the runner caches the artefacts.
    """

    name: ClassVar[str] = ""
    Hparams: ClassVar[type[Hparams]] = Hparams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    returns_probabilities: ClassVar[bool] = False
    needs_source: ClassVar[bool] = False

    def __init__(self, model: nn.Module, hparams: Hparams):
        self.model = model
        self.hparams = hparams
        self.configure_model()
        params = self.trainable_parameters()
        self.optimizer = build_optimizer(params, hparams) if params else None
        self._nonfinite_steps: torch.Tensor | None = None
        if self.optimizer is not None:
            self.optimizer.register_step_pre_hook(self._watch_gradients)
        self.snapshot()

    @classmethod
    def make_hparams(cls, family: str = "cifar", **overrides: Any) -> Hparams:
        """Official hyperparameters of `family` updated by `overrides` (unknown keys are errors)."""
        if family not in FAMILIES:
            raise ConfigError(f"unknown benchmark family {family!r}; valid: {', '.join(FAMILIES)}")
        names = [f.name for f in dataclasses.fields(cls.Hparams)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(f"method {cls.name!r} has no hyperparameter {unknown}; valid: {', '.join(names)}")
        return cls.Hparams(**{**cls.PRESETS.get(family, {}), **overrides})

    # -- set-up -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Put the model into the mode the method adapts in (default: eval, nothing trainable)."""
        self.model.eval().requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: none)."""
        return []

    # -- inference ----------------------------------------------------------------------------
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for batch `x` (NCHW in [0,1]), predicted before this batch's update."""
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the current state without any update (used for frozen evaluation)."""
        return self.model(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_adapt(x)

    # -- divergence -------------------------------------------------------------------------------
    def _watch_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: count, on the device, steps whose gradients are not finite.

        A NaN/inf loss shows up here without a host sync and without code in each method; the
        step itself is left alone (the official code takes it too).
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            bad = (~torch.nn.utils.get_total_norm(grads).isfinite()).float()
            self._nonfinite_steps = bad if self._nonfinite_steps is None else self._nonfinite_steps + bad

    def pop_nonfinite_steps(self) -> torch.Tensor | None:
        """Device count of steps with non-finite gradients since the last call (None: none taken)."""
        count, self._nonfinite_steps = self._nonfinite_steps, None
        return count

    # -- state ----------------------------------------------------------------------------------
    # Attributes that are part of the state: modules (teachers, anchors, projectors) and tensors that
    # may be None until the first batch (moving averages). Subclasses list theirs; `state_dict`,
    # `load_state_dict` and therefore `reset` then cover them without code of their own.
    state_modules: ClassVar[tuple[str, ...]] = ()
    state_tensors: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """Everything `reset` restores: model, optimizer and method-specific state."""
        state: dict[str, Any] = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        state.update({name: getattr(self, name).state_dict() for name in self.state_modules})
        for name in self.state_tensors:
            value = getattr(self, name)
            state[name] = None if value is None else value.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        self.model.load_state_dict(state["model"], strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        for name in self.state_modules:
            getattr(self, name).load_state_dict(state[name], strict=True)
        for name in self.state_tensors:
            setattr(self, name, None if state[name] is None else state[name].clone())

    def snapshot(self) -> None:
        """Remember the current state as the post-set-up state that `reset` returns to."""
        self._initial_state = copy.deepcopy(self.state_dict())

    def reset(self) -> None:
        """Return to the state right after set-up (weights, optimizer, memories)."""
        self.load_state_dict(copy.deepcopy(self._initial_state))

    # -- optional preparation on source data ------------------------------------------------------
    def compute_preparation(self, source: Any, progress: bool = True) -> dict[str, torch.Tensor]:
        """Artefacts computed from source data (Fisher, prototypes, ...); cached by the runner."""
        raise NotImplementedError(f"method {self.name} has no preparation step")

    def load_preparation(self, artefacts: dict[str, torch.Tensor]) -> None:
        """Install cached artefacts; the runner snapshots the state afterwards."""
        raise NotImplementedError(f"method {self.name} has no preparation step")

    def attach_source(self, source: Any) -> None:
        """Receive the labelled source data for use while adapting (e.g. RMT's source replay).

        Called by the runner for `needs_source` methods before the preparation is installed, whether
        the artefacts are computed or loaded from the cache. Default: the data is not kept.
        """
