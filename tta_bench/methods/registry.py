"""Method registry in the style of timm: `register_method`, `list_methods`, `create_method`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

from torch import nn

from tta_bench.errors import ConfigError

if TYPE_CHECKING:
    from tta_bench.methods.base import Method

M = TypeVar("M", bound="type[Method]")
_METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator that registers a `Method` subclass under `name`."""

    def wrap(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def unregister_method(name: str) -> None:
    """Remove a method (for tests that register temporary ones)."""
    _METHODS.pop(name, None)


def list_methods() -> list[str]:
    """Registered method names."""
    return sorted(_METHODS)


def method_class(name: str) -> type["Method"]:
    """The class registered under `name`, with the valid names in the error."""
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, model: nn.Module, family: str = "cifar", **hparams: Any) -> "Method":
    """Wrap `model` in method `name` with the official `family` defaults updated by `hparams`."""
    cls = method_class(name)
    return cls(model, cls.make_hparams(family, **hparams))
