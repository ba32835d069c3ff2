"""RMT: set-up, prototypes, contrastive loss, warm-up, source replay, reset and the cached preparation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import tta_bench
from conftest import assert_adapts_alike
from tta_bench.methods.losses import symmetric_cross_entropy
from tta_bench.methods.norm_layers import use_batch_statistics
from tta_bench.methods.preparation import SourceData, prepare_method
from tta_bench.methods.rmt import RMT, ShuffledSource, contrastive_loss, nearest_prototypes
from tta_bench.models.split import features_and_logits


def toy_source(n: int = 12, seed: int = 0) -> SourceData:
    """n random 6x6 images with labels 0, 1, 2, 0, 1, 2, ..."""
    rng = np.random.default_rng(seed)
    return SourceData(rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8), np.arange(n) % 3, "toy/train")


def prepared(model: nn.Module, name: str = "rmt", **hparams) -> RMT:
    """A method with its preparation computed on the toy source (no cache)."""
    method = tta_bench.create_method(name, model, **hparams)
    source = toy_source()
    method.attach_source(source)
    method.load_preparation(method.compute_preparation(source, progress=False))
    method.snapshot()
    return method


def test_setup_trains_every_weight_and_the_projector(tiny_model):
    method = tta_bench.create_method("rmt", tiny_model)
    model_params = list(tiny_model.parameters())
    trained = method.optimizer.param_groups[0]["params"]
    assert len(method.optimizer.param_groups) == 1
    assert trained[: len(model_params)] == model_params and all(p.requires_grad for p in model_params)
    assert trained[len(model_params):] == list(method.projector.parameters())
    # Projector Linear(d, 128) - ReLU - Linear(128, 128) with d = the head's input width.
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]
    assert (method.projector[0].in_features, method.projector[0].out_features) == (4, 128)
    assert (method.projector[2].in_features, method.projector[2].out_features) == (128, 128)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert not tiny_model.training and tiny_model.bn.running_mean is None  # eval mode, batch statistics
    assert isinstance(method.optimizer, torch.optim.Adam) and method.optimizer.param_groups[0]["lr"] == 1e-3
    hp = method.hparams
    assert (hp.teacher_momentum, hp.temperature, hp.lambda_ce_src, hp.lambda_ce_trg, hp.lambda_cont) == (0.999, 0.1, 1, 1, 1)
    assert (hp.warmup_samples, hp.prototype_samples, hp.source_batch_size) == (50000, 100000, 200)


def test_presets_imagenet_and_source_free(tiny_model):
    method = tta_bench.create_method("rmt", copy.deepcopy(tiny_model), family="imagenet")
    group = method.optimizer.param_groups[0]
    assert isinstance(method.optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], method.hparams.source_batch_size) == (0.01, 0.9, True, 64)
    free = tta_bench.create_method("rmt_source_free", tiny_model, family="imagenet")
    assert (free.hparams.lambda_ce_src, free.hparams.warmup_samples, free.hparams.lr) == (0.0, 0, 0.01)


def test_prototypes_are_per_class_means_of_batch_statistics_features(tiny_model):
    reference = copy.deepcopy(tiny_model).eval()
    use_batch_statistics(reference)
    method = tta_bench.create_method("rmt", tiny_model, source_batch_size=12, warmup_samples=0)
    source = toy_source(12)
    prototypes = method.compute_preparation(source, progress=False)["prototypes"]
    # One batch of all 12 images (features do not depend on the order within a batch).
    x = torch.from_numpy(source.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        features, _ = features_and_logits(reference, x)
    expected = torch.stack([features[source.labels == c].mean(0) for c in range(3)])  # not normalised
    torch.testing.assert_close(prototypes, expected)


def test_missing_source_class_is_a_clear_error(tiny_model):
    source = toy_source(12)
    source.labels[:] = 0
    with pytest.raises(ValueError, match="lacks classes"):
        tta_bench.create_method("rmt_source_free", tiny_model).compute_preparation(source, progress=False)


def test_nearest_prototype_uses_cosine_similarity():
    prototypes = torch.tensor([[10.0, 0.0], [1.0, 1.0]])
    features = torch.tensor([[0.1, 0.12], [5.0, 1.0]])  # closer in angle to [1,1] / [1,0]
    torch.testing.assert_close(nearest_prototypes(features, prototypes), prototypes[[1, 0]])


def test_contrastive_loss_equals_hand_computation():
    torch.manual_seed(0)
    views = torch.randn(2, 3, 4)  # B=2 samples, V=3 views
    temperature = 0.1
    z = [nn.functional.normalize(views[b, v], dim=0) for v in range(3) for b in range(2)]  # anchor a = v*B + b
    terms = []
    for a in range(6):
        denominator = sum(math.exp(float(z[a] @ z[k]) / temperature) for k in range(6) if k != a)
        positives = [k for k in range(6) if k != a and k % 2 == a % 2]
        terms.append(-sum(float(z[a] @ z[k]) / temperature - math.log(denominator) for k in positives) / len(positives))
    expected = sum(terms) / len(terms)
    actual = contrastive_loss(views, nn.Identity(), temperature)
    assert actual.item() == pytest.approx(expected, rel=1e-5)
    # Through a projector the same formula applies to the projected views.
    projector = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad():
        projected = projector(views.reshape(6, 4)).reshape(2, 3, 8)
    torch.testing.assert_close(contrastive_loss(views, projector, temperature),
                               contrastive_loss(projected, nn.Identity(), temperature))


def test_shuffled_source_serves_epochs_with_a_partial_last_batch():
    stream = ShuffledSource(toy_source(10), batch_size=4, device=torch.device("cpu"))
    sizes, seen = [], []
    for _ in range(3):
        x, y = stream.next()
        sizes.append(len(y))
        seen.append(x)
    assert sizes == [4, 4, 2]
    images = torch.cat(seen).mul(255).round().to(torch.uint8)
    expected = torch.from_numpy(toy_source(10).images).permute(0, 3, 1, 2)
    # Every source image exactly once per epoch.
    assert sorted(map(bytes, images.flatten(1).numpy())) == sorted(map(bytes, expected.flatten(1).numpy()))


def test_warm_up_ramps_the_lr_updates_the_teacher_and_ignores_labels(tiny_model):
    lrs = []
    method = tta_bench.create_method("rmt", copy.deepcopy(tiny_model), source_batch_size=4, warmup_samples=12)
    step = method.optimizer.step
    method.optimizer.step = lambda: (lrs.append(method.optimizer.param_groups[0]["lr"]), step())[1]
    teacher0 = copy.deepcopy(method.teacher.state_dict())
    projector0 = copy.deepcopy(method.projector.state_dict())
    torch.manual_seed(1)
    artefacts = method.compute_preparation(toy_source(12), progress=False)
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert method.optimizer.param_groups[0]["lr"] == 1e-3
    assert not torch.allclose(method.teacher.state_dict()["fc.weight"], teacher0["fc.weight"])
    torch.testing.assert_close(method.projector.state_dict(), projector0)  # no contrastive loss in the warm-up
    assert {k.split("/")[0] for k in artefacts} == {"prototypes", "model", "teacher", "optimizer"}
    # The warm-up loss does not use labels: other labels give the same warmed-up student.
    other = tta_bench.create_method("rmt", copy.deepcopy(tiny_model), source_batch_size=4, warmup_samples=12)
    source = toy_source(12)
    source.labels[:] = source.labels[::-1].copy()
    torch.manual_seed(1)
    other_artefacts = other.compute_preparation(source, progress=False)
    torch.testing.assert_close(other_artefacts["model/fc.weight"], artefacts["model/fc.weight"])


def test_one_step_output_teacher_ema_and_replay(tiny_model):
    method = prepared(tiny_model, source_batch_size=4, warmup_samples=8)
    x = torch.rand(6, 3, 6, 6)
    student0, teacher0 = copy.deepcopy(method.model), copy.deepcopy(method.teacher)
    replayed = []
    draw = method.source.next
    method.source.next = lambda: replayed.append(1) or draw()
    out = method(x)
    with torch.no_grad():
        expected = student0(x) + teacher0(x)  # predictions come from before the update
    torch.testing.assert_close(out, expected)
    assert replayed == [1]  # one labelled source batch per step
    for name, p in method.teacher.named_parameters():
        mix = 0.999 * dict(teacher0.named_parameters())[name] + 0.001 * dict(method.model.named_parameters())[name]
        torch.testing.assert_close(p, mix)
    assert not torch.allclose(method.model.conv.weight, student0.conv.weight)


def test_source_free_has_no_warm_up_and_no_replay(tiny_model):
    method = prepared(tiny_model, name="rmt_source_free")
    assert method.source is None
    assert method.optimizer.state_dict()["state"] == {}
    out = method(torch.rand(6, 3, 6, 6))
    assert torch.isfinite(out).all()


def test_self_training_loss_is_symmetric_ce_on_both_views(tiny_model, monkeypatch):
    method = prepared(tiny_model, name="rmt_source_free", lambda_cont=0.0)
    monkeypatch.setattr(method, "augment", lambda x: x.flip(3))
    x = torch.rand(6, 3, 6, 6)
    student, teacher = copy.deepcopy(method.model), copy.deepcopy(method.teacher)
    _, loss = method.loss(x)
    with torch.no_grad():
        t = teacher(x)
        expected = (0.5 * symmetric_cross_entropy(student(x), t) + 0.5 * symmetric_cross_entropy(student(x.flip(3)), t)).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_reset_restores_the_post_warm_up_state(tiny_model):
    method = prepared(tiny_model, source_batch_size=4, warmup_samples=8)
    initial = copy.deepcopy(method.state_dict())
    assert initial["optimizer"]["state"]  # the warm-up's Adam moments are part of the reset state
    assert int(initial["optimizer"]["state"][0]["step"]) == 2
    for _ in range(3):
        method(torch.rand(6, 3, 6, 6))
    changed = method.state_dict()
    for key in ("model", "teacher", "projector"):
        assert any(not torch.equal(changed[key][k], initial[key][k]) for k in initial[key])
    method.reset()
    after = method.state_dict()
    for key in ("model", "teacher", "projector"):
        torch.testing.assert_close(after[key], initial[key])
    torch.testing.assert_close(after["optimizer"]["state"], initial["optimizer"]["state"])
    assert method.optimizer.state_dict()["state"].keys() == initial["optimizer"]["state"].keys()


def test_a_few_batches_without_nan(tiny_model):
    method = prepared(tiny_model, source_batch_size=4, warmup_samples=8)
    for _ in range(5):
        out = method(torch.rand(6, 3, 6, 6) * 2)
        assert torch.isfinite(out).all()
    assert all(torch.isfinite(p).all() for p in method.projector.parameters())


def test_preparation_is_cached(tiny_model, tmp_path, monkeypatch):
    calls = []
    compute = RMT.compute_preparation
    monkeypatch.setattr(RMT, "compute_preparation", lambda self, *a, **k: calls.append(1) or compute(self, *a, **k))
    source = toy_source()
    first = tta_bench.create_method("rmt", copy.deepcopy(tiny_model), source_batch_size=4, warmup_samples=8)
    path = prepare_method(first, source, tmp_path, weights_hash="abc", progress=False)
    second = tta_bench.create_method("rmt", copy.deepcopy(tiny_model), source_batch_size=4, warmup_samples=8)
    assert prepare_method(second, source, tmp_path, weights_hash="abc", progress=False) == path
    assert calls == [1]
    torch.testing.assert_close(second.prototypes, first.prototypes)
    a, b = first.state_dict(), second.state_dict()
    for key in ("model", "teacher"):
        torch.testing.assert_close(b[key], a[key])
    torch.testing.assert_close(b["optimizer"]["state"], a["optimizer"]["state"])
    assert second.source is not None  # the replay data is attached on a cache hit too


def test_reset_returns_the_replay_to_its_post_set_up_position(tiny_model):
    original = copy.deepcopy(tiny_model)
    torch.manual_seed(0)
    method = prepared(tiny_model, source_batch_size=5, warmup_samples=0)
    for _ in range(2):
        method(torch.rand(8, 3, 6, 6))
    method.reset()
    torch.manual_seed(0)
    assert_adapts_alike(method, prepared(original, source_batch_size=5, warmup_samples=0))
