"""The cached preparation step on source data, with a method registered only for this test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tta_bench
from tta_bench.methods.base import Method
from tta_bench.methods.preparation import SourceData, prepare_method
from tta_bench.methods.registry import unregister_method


@pytest.fixture
def mean_shift_method():
    """A method whose preparation computes the mean source image and subtracts it at test time."""

    @tta_bench.register_method("_test_mean_shift")
    class MeanShift(Method):
        needs_source = True
        calls = 0

        def configure_model(self):
            super().configure_model()
            self.mean_image = torch.zeros(())  # until the preparation step installs the real one

        def compute_preparation(self, source, progress=True):
            type(self).calls += 1
            total = sum(x.sum(0) for x, _ in source.batches(4, torch.device("cpu")))
            return {"mean_image": total / len(source.images)}

        def load_preparation(self, artefacts):
            self.mean_image = artefacts["mean_image"]

        def state_dict(self):
            return {**super().state_dict(), "mean_image": self.mean_image.clone()}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            self.mean_image = state["mean_image"].clone()

        def forward_and_adapt(self, x):
            out = self.predict(x - self.mean_image)
            self.mean_image = self.mean_image * 0  # state changes while adapting
            return out

    yield MeanShift
    unregister_method("_test_mean_shift")


def test_preparation_is_cached_and_part_of_the_reset_state(mean_shift_method, tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    source = SourceData(rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8), np.zeros(10, dtype=np.int64), "toy/train")
    expected = torch.from_numpy(source.images).permute(0, 3, 1, 2).float().div(255).mean(0)
    method = tta_bench.create_method("_test_mean_shift", tiny_model)
    path = prepare_method(method, source, tmp_path, weights_hash="abc", progress=False)
    torch.testing.assert_close(method.mean_image, expected)
    # A second set-up with the same key loads the cached artefacts instead of recomputing.
    again = tta_bench.create_method("_test_mean_shift", tiny_model)
    assert prepare_method(again, source, tmp_path, weights_hash="abc", progress=False) == path
    assert mean_shift_method.calls == 1
    # Another model gets another key.
    prepare_method(again, source, tmp_path, weights_hash="other", progress=False)
    assert mean_shift_method.calls == 2
    # reset() returns to the post-preparation state.
    method(torch.rand(2, 3, 6, 6))
    assert method.mean_image.abs().sum() == 0
    method.reset()
    torch.testing.assert_close(method.mean_image, expected)
