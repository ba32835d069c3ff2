"""LAME against hand computations: kernels, sigma, the fixed point and its stopping rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import tta_bench
from tta_bench.methods.lame import affinity_matrix, laplacian_optimization

# Three unit vectors at 0, 90 and 180 degrees: squared distances 2 (neighbours) and 4 (opposite).
CIRCLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def reference_lame(unary: list[list[float]], kernel: list[list[float]], max_steps: int = 100,
                   tol: float = 1e-8) -> tuple[list[list[float]], int]:
    """Plain-Python fixed point with the official rule: break from the third iteration on."""
    n, k = len(unary), len(unary[0])
    y = [softmax([-u for u in row]) for row in unary]
    old, steps = math.inf, 0
    for i in range(max_steps):
        pairwise = [[sum(kernel[a][b] * y[b][c] for b in range(n)) for c in range(k)] for a in range(n)]
        y = [softmax([-unary[a][c] + pairwise[a][c] for c in range(k)]) for a in range(n)]
        energy = sum(unary[a][c] * y[a][c] - pairwise[a][c] * y[a][c] + y[a][c] * math.log(max(y[a][c], 1e-20))
                     for a in range(n) for c in range(k))
        steps = i + 1
        if i > 1 and abs(energy - old) <= tol * abs(old):
            break
        old = energy
    return y, steps


def test_rbf_sigma_is_the_mean_kth_distance_with_self_included():
    # knn 2 = the nearest other point: sqrt(2) for all three, so W = exp(-d^2 / 4).
    w = affinity_matrix(CIRCLE, "rbf", knn=2)
    e = math.exp
    expected = torch.tensor([[1, e(-0.5), e(-1)], [e(-0.5), 1, e(-0.5)], [e(-1), e(-0.5), 1]])
    torch.testing.assert_close(w, expected)
    # knn 5 > N = 3: the 3rd distance (self included) -> 2, sqrt(2), 2; sigma = (4 + sqrt 2) / 3.
    sigma = (4 + math.sqrt(2)) / 3
    w5 = affinity_matrix(CIRCLE, "rbf", knn=5)
    assert w5[0, 1].item() == pytest.approx(math.exp(-2 / (2 * sigma**2)), rel=1e-6)
    assert w5[0, 2].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-6)


def test_knn_affinity_drops_self_and_is_not_symmetrised():
    # On a line: 0, 1, 3, 10. One neighbour each: 0->1, 1->0, 3->1, 10->3.
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    expected = torch.zeros(4, 4)
    expected[0, 1] = expected[1, 0] = expected[2, 1] = expected[3, 2] = 1.0
    torch.testing.assert_close(affinity_matrix(x, "kNN", knn=1), expected)
    torch.testing.assert_close(affinity_matrix(CIRCLE, "linear", knn=5), CIRCLE @ CIRCLE.t())


def test_fixed_point_and_stopping_rule_match_the_official_loop():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.3, 0.6]])
    unary = -torch.log(probs + 1e-10)
    kernel = affinity_matrix(CIRCLE, "rbf", knn=2)
    expected, steps = reference_lame(unary.tolist(), kernel.tolist())
    assert 3 <= steps < 100  # stops early, so the device-side freeze is exercised
    y = laplacian_optimization(unary, kernel)
    torch.testing.assert_close(y, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # At convergence Y is a fixed point of Y = softmax(-u + W Y).
    torch.testing.assert_close(y, (-unary + kernel @ y).softmax(1), rtol=1e-4, atol=1e-5)
    # One step by hand: Y1 = softmax(-u + W softmax(-u)).
    one, _ = reference_lame(unary.tolist(), kernel.tolist(), max_steps=1)
    torch.testing.assert_close(laplacian_optimization(unary, kernel, max_steps=1), torch.tensor(one))
    torch.testing.assert_close(laplacian_optimization(unary, kernel, max_steps=1), (-unary + kernel @ probs).softmax(1))


def test_state_after_convergence_is_frozen():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    unary = -torch.log(probs + 1e-10)
    kernel = affinity_matrix(CIRCLE, "rbf", knn=2)
    expected, steps = reference_lame(unary.tolist(), kernel.tolist(), tol=1e-3)  # loose: stops after few steps
    assert steps < 10
    stopped = laplacian_optimization(unary, kernel, tol=1e-3)
    torch.testing.assert_close(stopped, torch.tensor(expected))
    assert not torch.allclose(stopped, laplacian_optimization(unary, kernel, max_steps=steps + 1, tol=0.0), atol=1e-7)


def test_method_on_tiny_model_returns_lame_probabilities(tiny_model):
    ref = copy.deepcopy(tiny_model)
    method = tta_bench.create_method("lame", tiny_model)
    assert method.returns_probabilities and method.optimizer is None
    assert not any(p.requires_grad for p in tiny_model.parameters()) and not tiny_model.training
    x = torch.rand(12, 3, 6, 6)
    out = method(x)
    feats = torch.relu(ref.bn(ref.conv(x))).mean((2, 3))  # eval-mode BN: source statistics
    unary = -torch.log(ref.fc(feats).softmax(1) + 1e-10)
    normed = feats / feats.norm(dim=1, keepdim=True)
    expected, _ = reference_lame(unary.tolist(), affinity_matrix(normed, "rbf", 5).tolist())
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(12))
    torch.testing.assert_close(method.predict(x), out)
    torch.testing.assert_close(tiny_model.state_dict(), ref.state_dict())  # nothing changes
    method.reset()
    torch.testing.assert_close(method(x), out)


def test_symmetry_option_and_single_image(tiny_model):
    x = torch.rand(9, 3, 6, 6)
    plain = tta_bench.create_method("lame", copy.deepcopy(tiny_model), affinity="kNN", knn=2)
    sym = tta_bench.create_method("lame", copy.deepcopy(tiny_model), affinity="kNN", knn=2, force_symmetry=True)
    assert not torch.allclose(plain(x), sym(x))
    # One image: the rbf kernel is [[1]] (official: NaN from sigma 0); the output stays finite.
    single = tta_bench.create_method("lame", tiny_model)(x[:1])
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single.sum(), torch.tensor(1.0))
