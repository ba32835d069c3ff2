"""Stream composition: order, determinism, file order, Dirichlet correlation, label shift, mixing."""

from __future__ import annotations

import numpy as np
import pytest

from tta_bench.data.domains import BENCHMARK_CORRUPTIONS
from tta_bench.data.streams import (
    GRADUAL_SEVERITIES,
    TRANSFORMS,
    StreamSpec,
    build_stream,
    dirichlet_order,
    parse_setting,
)
from tta_bench.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, size=1000)
CORRUPTIONS = BENCHMARK_CORRUPTIONS[:4]


def make(setting: str, **kw) -> "Stream":  # noqa: F821
    spec = StreamSpec(setting=setting, corruptions=kw.pop("corruptions", CORRUPTIONS),
                      severities=kw.pop("severities", (5,)), n_examples=kw.pop("n_examples", 300),
                      seed=kw.pop("seed", 1), **kw)
    return build_stream(spec, LABELS, 10)


def positions(stream) -> list[tuple[int, int]]:
    return [(int(d), int(r)) for s in stream.segments for d, r in zip(s.domain_ids, s.rows)]


def test_continual_order_and_single_reset():
    s = make("continual")
    assert [d.corruption for d in s.domains] == list(CORRUPTIONS)
    assert [seg.reset for seg in s.segments] == [True, False, False, False]
    assert all(len(seg) == 300 for seg in s.segments)


def test_same_permutation_in_every_domain():
    s = make("continual")
    for seg in s.segments[1:]:
        np.testing.assert_array_equal(seg.rows, s.segments[0].rows)
    assert not np.array_equal(s.segments[0].rows, np.arange(300))


def test_shuffle_false_gives_file_order():
    s = make("continual", shuffle=False)
    for seg in s.segments:
        np.testing.assert_array_equal(seg.rows, np.arange(300))


def test_deterministic_for_a_seed_and_different_across_seeds():
    for setting in ("continual", "mixed_domains+correlated", "label_shift", "gradual+correlated"):
        assert positions(make(setting)) == positions(make(setting))
        assert positions(make(setting)) != positions(make(setting, seed=2))


def test_reset_each_shift_resets_every_domain():
    assert all(seg.reset for seg in make("reset_each_shift").segments)


def test_gradual_severity_order():
    s = make("gradual", corruptions=CORRUPTIONS[:2])
    sev = [d.severity for d in s.domains]
    assert sev == list(GRADUAL_SEVERITIES) * 2
    assert [d.corruption for d in s.domains] == [CORRUPTIONS[0]] * 9 + [CORRUPTIONS[1]] * 9


def test_recurring_repeats_the_sequence():
    s = make("recurring", rounds=3)
    assert [d.corruption for d in s.domains] == list(CORRUPTIONS) * 3
    assert [d.round for d in s.domains] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({d.index for d in s.domains}) == 12


def test_mixed_domains_tags_every_sample():
    s = make("mixed_domains")
    assert len(s.segments) == 1
    seg = s.segments[0]
    assert len(seg) == 4 * 300
    assert np.bincount(seg.domain_ids).tolist() == [300] * 4
    # Interleaved, not concatenated.
    assert len(np.unique(seg.domain_ids[:50])) > 1
    # Every (domain, row) pair appears once.
    assert len(set(positions(s))) == 1200


def _classes_per_window(labels: np.ndarray, window: int = 50) -> float:
    """Mean number of distinct labels in consecutive windows (about 10 for i.i.d. CIFAR-like order)."""
    return float(np.mean([len(np.unique(labels[i : i + window])) for i in range(0, len(labels) - window + 1, window)]))


def test_dirichlet_order_statistics():
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    iid = rng.permutation(labels)
    strong = labels[dirichlet_order(labels, 10, 0.01, np.random.default_rng(1))]
    weak = labels[dirichlet_order(labels, 10, 10.0, np.random.default_rng(1))]
    # Smaller delta -> fewer classes at a time; a large delta approaches i.i.d.
    assert _classes_per_window(strong) < 3
    assert _classes_per_window(weak) > 8
    assert _classes_per_window(iid) > 9
    # A permutation: every sample once.
    assert sorted(strong.tolist()) == labels.tolist()


def test_dirichlet_delta_zero_sorts_by_label():
    order = dirichlet_order(LABELS, 10, 0.0, np.random.default_rng(0))
    assert np.all(np.diff(LABELS[order]) >= 0)


def test_correlated_composes_with_mixed_and_reset():
    s = make("mixed_domains+correlated")
    assert _classes_per_window(LABELS[s.segments[0].rows]) < 5
    s = make("reset_each_shift+correlated")
    assert all(seg.reset for seg in s.segments)
    assert all(_classes_per_window(LABELS[seg.rows]) < 8 for seg in s.segments)  # i.i.d.: 10


def test_label_shift_subsamples_to_imbalanced_classes():
    s = make("label_shift", n_examples=1000, label_shift_alpha=0.5)
    for d, seg in zip(s.domains, s.segments):
        counts = np.bincount(LABELS[seg.rows], minlength=10)
        np.testing.assert_array_equal(counts, s.class_counts[d.index])
        assert len(set(seg.rows.tolist())) == len(seg)  # without replacement
        assert counts.max() > 3 * max(counts.min(), 1)
    # Different domains draw different proportions.
    assert not np.array_equal(s.class_counts[0], s.class_counts[1])


def test_every_transform_parses_and_bad_names_are_errors():
    for t in TRANSFORMS:
        assert parse_setting(t) == {t}
    assert parse_setting("mixed_domains+correlated") == {"mixed_domains", "correlated"}
    with pytest.raises(ConfigError, match="valid|one or more"):
        parse_setting("continual+shuffled")


@pytest.mark.parametrize("setting", TRANSFORMS)
def test_every_setting_builds_with_small_n(setting):
    s = make(setting, n_examples=200, rounds=2)
    assert s.n_samples > 0
    assert sum(1 for _ in s.batch_bounds(64)) == s.n_batches(64)
