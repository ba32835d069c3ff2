"""Config `_target_`s are instantiated only from tta_bench and the Hydra launcher/sweeper plugins.

A composed config can name any importable callable in `_target_`; a config that came from
elsewhere (an override, a copied experiment file) must not be able to run arbitrary code.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from tta_bench.errors import ConfigError

ALLOWED_TARGET_PREFIXES = (
    "tta_bench.",
    "hydra_plugins.hydra_submitit_launcher.",
    "hydra._internal.core_plugins.",  # Hydra's own basic launcher and sweeper
)
_ALLOWED = ", ".join(p.rstrip(".") for p in ALLOWED_TARGET_PREFIXES)


def is_allowed_target(target: Any) -> bool:
    """Whether `target` is a dotted path under one of the allowed packages."""
    return isinstance(target, str) and target.startswith(ALLOWED_TARGET_PREFIXES)


def foreign_targets(node: Any, path: str = "") -> list[str]:
    """`key: target` of every `_target_` in a config tree (unresolved) that is not allowed.

    An interpolated target (`${...}`) is refused too: only a literal path can be checked.
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if key == "_target_" and not is_allowed_target(value):
            found.append(f"{here}: {value}")
        found += foreign_targets(value, here)
    return found


def check_targets(*configs: Any) -> None:
    """Raise ConfigError naming every `_target_` outside tta_bench and the launcher plugins."""
    found = [f for cfg in configs if cfg is not None for f in foreign_targets(cfg)]
    if found:
        raise ConfigError(f"refusing to instantiate {'; '.join(found)}: _target_ must be under {_ALLOWED}")


def check_override_targets(overrides: list[str]) -> None:
    """Refuse command-line overrides that set a `_target_` outside the allowed packages.

    Checked before Hydra starts, because Hydra itself instantiates callbacks and launchers.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.split(".")[-1] == "_target_" and not is_allowed_target(value.strip("'\"")):
            raise ConfigError(f"refusing to instantiate {key.lstrip('+~')}: {value}: _target_ must be under {_ALLOWED}")


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` after checking that every `_target_` in `node` is allowed."""
    check_targets(node)
    return hydra_instantiate(node, **kwargs)
