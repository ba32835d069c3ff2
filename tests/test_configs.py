"""Every option of every config group composes with Hydra's compose API and resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tta_bench.data.datasets import FAMILIES
from tta_bench.data.streams import parse_setting
from tta_bench.experiment import resolve

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("data", "model", "method", "experiment")


def compose_with(overrides: list[str], tmp_path: Path):
    """Compose the app config with `overrides`, writing nothing outside tmp_path."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"results_dir={tmp_path}", *overrides])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(override, tmp_path):
    cfg = compose_with([override], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["name"]
    parse_setting(cfg.data.setting)
    config, hparams = resolve(cfg)
    assert config["method"]["name"] == cfg.method.name


@pytest.mark.parametrize("data", options("data"))
def test_data_options_name_dataset_and_setting(data, tmp_path):
    cfg = compose_with([f"data={data}"], tmp_path)
    assert data == f"{cfg.data.name}_{cfg.data.setting}"
    assert cfg.data.family in FAMILIES


def test_setting_override_composes_transforms(tmp_path):
    cfg = compose_with(["data.setting=mixed_domains+correlated"], tmp_path)
    assert parse_setting(cfg.data.setting) == {"mixed_domains", "correlated"}


def test_method_hparams_follow_the_data_family(tmp_path):
    config, hp = resolve(compose_with(["method=tent"], tmp_path))
    assert (hp.optimizer, hp.lr) == ("adam", 1e-3)
    config, hp = resolve(compose_with(["method=tent", "data.family=imagenet"], tmp_path))
    assert (hp.optimizer, hp.lr, hp.nesterov) == ("sgd", 2.5e-4, True)
    config, hp = resolve(compose_with(["method=tent", "method.lr=0.01"], tmp_path))
    assert hp.lr == 0.01 and config["method"]["lr"] == 0.01


def test_default_model_follows_the_data(tmp_path):
    assert compose_with(["data=cifar10_c_continual"], tmp_path).model.name == "wrn28_10_standard"
    assert compose_with([], tmp_path).model.name == "digits_c"
