"""Metric values on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tta_bench.metrics import DomainMetrics, confidence_bins


def _update(probs: list[list[float]], labels: list[int], domains: list[int], n_domains: int = 1,
            are_probabilities: bool = True) -> dict[str, np.ndarray]:
    m = DomainMetrics(n_domains, len(probs[0]), torch.device("cpu"))
    out = torch.tensor(probs) if are_probabilities else torch.tensor(probs).log()
    m.update(out, torch.tensor(labels), torch.tensor(domains), are_probabilities)
    return m.compute()


def test_error_nll_brier_by_hand():
    r = _update([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]], [0, 0], [0, 0])
    assert r["error"][0] == pytest.approx(0.5)
    assert r["nll"][0] == pytest.approx((-math.log(0.7) - math.log(0.3)) / 2)
    brier0 = 0.3**2 + 0.2**2 + 0.1**2
    brier1 = 0.7**2 + 0.6**2 + 0.1**2
    assert r["brier"][0] == pytest.approx((brier0 + brier1) / 2)


def test_logits_and_probabilities_agree():
    probs = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]
    a = _update(probs, [0, 1], [0, 0], are_probabilities=True)
    b = _update(probs, [0, 1], [0, 0], are_probabilities=False)  # log-probs are valid logits
    for key in ("error", "nll", "brier", "ece"):
        assert a[key][0] == pytest.approx(b[key][0], abs=1e-6)


def test_ece_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong) -> one bin: |0.5 - 0.9| * 2/4
    # 0.55 (correct), 0.45 (correct; 3 classes so max can be 0.45) -> bins 8 and 6: |1-.55|/4 + |1-.45|/4
    probs = [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.55, 0.25, 0.2], [0.45, 0.3, 0.25]]
    r = _update(probs, [0, 1, 0, 0], [0, 0, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.55) + 0.25 * abs(1 - 0.45)
    assert r["ece"][0] == pytest.approx(expected)


def test_bins_are_right_closed():
    conf = torch.tensor([1 / 15, 1 / 15 + 1e-6, 1.0, 0.5])
    assert confidence_bins(conf).tolist() == [0, 1, 14, 7]


def test_per_domain_accumulation_and_total():
    r = _update([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 0, 1], [0, 1, 1], n_domains=2)
    assert r["n_samples"].tolist() == [1, 2, 3]
    assert r["error"].tolist() == pytest.approx([0.0, 1.0, 2 / 3])
    assert r["collapse_share"][1] == pytest.approx(0.5)


def test_nonfinite_outputs_are_counted():
    m = DomainMetrics(1, 2, torch.device("cpu"))
    m.update(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert m.compute()["nonfinite_share"][0] == pytest.approx(0.5)


def test_reliability_bins_pool_all_domains_and_reproduce_the_pooled_ece():
    torch.manual_seed(0)
    metrics = DomainMetrics(2, 4, torch.device("cpu"))
    logits, labels = torch.randn(50, 4) * 2, torch.randint(0, 4, (50,))
    metrics.update(logits, labels, torch.arange(50) % 2)
    out = metrics.compute()
    count, conf, acc = out["reliability_count"], out["reliability_confidence"], out["reliability_accuracy"]
    assert count.shape == (15,) and count.sum() == 50
    filled = count > 0
    pooled_ece = (np.abs(conf[filled] - acc[filled]) * count[filled]).sum() / 50
    assert math.isclose(pooled_ece, out["ece"][-1], rel_tol=1e-9)
    probs = logits.softmax(1)
    correct = probs.argmax(1).eq(labels).double()
    k = confidence_bins(probs.max(1).values)
    assert math.isclose(acc[int(k[0])], correct[k == k[0]].mean().item(), rel_tol=1e-9)
