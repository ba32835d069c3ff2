"""The model zoo: offline checkpoints load strictly, errors say what to fetch, robustbench imports.

Fixture checkpoints hold random weights saved the way RobustBench and torchvision save theirs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tta_bench.errors import ConfigError, DataNotFoundError, TTABenchError
from tta_bench.models import create_model, list_models
from tta_bench.models.robustbench_compat import model_zoo_entry

WRN_PATH = Path("cifar10/corruptions/Standard.pt")
RESNEXT_PATH = Path("cifar100/corruptions/Hendrycks2020AugMix_ResNeXt.pt")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(obj: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def robustbench_state(dataset: str, name: str) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model_zoo_entry(dataset, "corruptions", name)["model"]().state_dict()


@pytest.fixture(scope="module")
def wrn_state() -> dict[str, torch.Tensor]:
    return robustbench_state("cifar10", "Standard")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("module.")], v) for k, v in state.items())


def test_every_model_has_a_config():
    configs = {p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml")}
    assert set(list_models()) <= configs
    assert {"wrn28_10_standard", "resnext29_augmix", "resnet50", "vit_b16", "digits_c"} <= set(list_models())


def test_wrn_loads_a_module_prefixed_nested_checkpoint(tmp_path, wrn_state):
    # RobustBench's Standard.pt layout: {'state_dict': {'module.<key>': ...}}.
    state = {f"module.{k}": v for k, v in wrn_state.items()}
    save({"state_dict": state}, tmp_path / WRN_PATH)
    model = create_model("wrn28_10_standard", tmp_path, tmp_path, progress=False)
    assert n_params(model) == 36_479_194
    assert model.weights_id == "robustbench:cifar10/corruptions/Standard"
    assert not model.training
    assert_same_weights(model, state)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnext_loads_a_bare_checkpoint_without_its_normalisation_buffers(tmp_path):
    state = robustbench_state("cifar100", "Hendrycks2020AugMix_ResNeXt")
    published = {f"model.{k}": v for k, v in state.items() if k not in ("mu", "sigma")}
    save(published, tmp_path / RESNEXT_PATH)
    model = create_model("resnext29_augmix", tmp_path, tmp_path, progress=False)
    assert n_params(model) == 6_900_132
    assert model.weights_id == "robustbench:cifar100/corruptions/Hendrycks2020AugMix_ResNeXt"
    assert torch.equal(model.mu, torch.full((1, 3, 1, 1), 0.5)) and torch.equal(model.sigma, model.mu)
    assert torch.equal(model.state_dict()["classifier.weight"], state["classifier.weight"])
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_missing_robustbench_checkpoint_names_path_and_source(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        create_model("wrn28_10_standard", tmp_path, tmp_path, progress=False)
    message = str(info.value)
    assert str(tmp_path / WRN_PATH) in message
    assert "drive.google.com/uc?id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC" in message
    assert "load_model('Standard'" in message and "never downloads" in message


def test_wrong_architecture_gives_a_readable_error(tmp_path):
    resnext = robustbench_state("cifar100", "Hendrycks2020AugMix_ResNeXt")
    save(resnext, tmp_path / WRN_PATH)
    with pytest.raises(TTABenchError) as info:
        create_model("wrn28_10_standard", tmp_path, tmp_path, progress=False)
    message = str(info.value)
    assert str(tmp_path / WRN_PATH) in message and "missing keys" in message and "unexpected keys" in message
    assert "block1.layer.0.bn1.weight" in message and "and " in message  # first keys, then a count


def test_shape_mismatch_names_the_tensor(tmp_path, wrn_state):
    state = dict(wrn_state, **{"fc.weight": torch.zeros(100, 640), "fc.bias": torch.zeros(100)})
    save(state, tmp_path / WRN_PATH)
    with pytest.raises(TTABenchError, match=r"shape mismatches.*fc\.weight \(100, 640\) vs \(10, 640\)"):
        create_model("wrn28_10_standard", tmp_path, tmp_path, progress=False)


class Payload:
    """Unpickling this would create `marker`: weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_are_read_weights_only(tmp_path):
    marker = tmp_path / "code_ran"
    save({"state_dict": {"w": torch.zeros(1)}, "args": Payload(marker)}, tmp_path / RESNEXT_PATH)
    with pytest.raises(TTABenchError, match="Refusing to load checkpoint .*weights_only=True"):
        create_model("resnext29_augmix", tmp_path, tmp_path, progress=False)
    assert not marker.exists()


def test_unreadable_and_non_state_dict_files(tmp_path):
    path = tmp_path / RESNEXT_PATH
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TTABenchError, match="Cannot read checkpoint"):
        create_model("resnext29_augmix", tmp_path, tmp_path, progress=False)
    save({"epoch": 3, "best": 0.5}, path)
    with pytest.raises(TTABenchError, match="not a state_dict"):
        create_model("resnext29_augmix", tmp_path, tmp_path, progress=False)


def test_resnet50_v1_from_the_hub_cache_normalises_inside(torch_home):
    state = torchvision.models.resnet50().state_dict()
    save(state, torch_home / "resnet50-0676ba61.pth")  # torchvision's layout: a bare state_dict
    model = create_model("resnet50", progress=False)
    assert model.weights_id == "torchvision:resnet50/IMAGENET1K_V1"
    assert n_params(model) == 25_557_032
    assert torch.equal(model.model.fc.weight, state["fc.weight"])
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000)
        assert torch.allclose(out, model.model((x - mean) / std))


def test_resnet50_weights_option(torch_home):
    with pytest.raises(DataNotFoundError) as info:
        create_model("resnet50", progress=False, weights="IMAGENET1K_V2")
    message = str(info.value)
    assert str(torch_home / "resnet50-11ad3fa6.pth") in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    with pytest.raises(ConfigError, match="valid: IMAGENET1K_V1, IMAGENET1K_V2"):
        create_model("resnet50", progress=False, weights="IMAGENET1K_V9")


def test_vit_b16_from_the_hub_cache(torch_home):
    save(torchvision.models.vit_b_16().state_dict(), torch_home / "vit_b_16-c867db91.pth")
    model = create_model("vit_b16", progress=False)
    assert model.weights_id == "torchvision:vit_b_16/IMAGENET1K_V1"
    assert n_params(model) == 86_567_656
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_unknown_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no option"):
        create_model("digits_c", tmp_path, tmp_path, progress=False, weights="IMAGENET1K_V1")


def test_digits_model_carries_its_weights_id(tmp_path, monkeypatch):
    from tta_bench.models import digits

    monkeypatch.setattr(digits, "load_or_train_digits_model", lambda *a: digits.build_digits_model())
    assert create_model("digits_c", tmp_path, tmp_path, progress=False).weights_id == "tta_bench:digits_c/v1"


def test_robustbench_imports_despite_its_packaging_defects():
    # A fresh interpreter, so the import really goes through the adapter (pkg_resources, autoattack).
    code = (
        "import sys\n"
        "from tta_bench.models.robustbench_compat import import_robustbench\n"
        "rb = import_robustbench()\n"
        "import robustbench.eval, robustbench.loaders as loaders\n"
        "assert robustbench.eval.AutoAttack.__module__.startswith(('autoattack', 'pyautoattack'))\n"
        "p = loaders.pkg_resources.resource_filename('robustbench.loaders', "
        "'helper_files/imagenet_test_image_ids.txt')\n"
        "assert open(p).readline().strip(), p\n"
        "for name in ('pkg_resources', 'autoattack', 'autoattack.state'):\n"
        "    mod = sys.modules.get(name)  # stand-ins do not leak to other packages\n"
        "    assert mod is None or (mod.__name__ == name and 'stand-in' not in (mod.__doc__ or '')), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
