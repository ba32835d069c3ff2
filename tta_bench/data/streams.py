"""Test streams built from composable transforms (streams.md).

A setting is a `+`-joined set of transforms, e.g. `continual`, `mixed_domains+correlated`,
`gradual+label_shift`. Each transform is one small function applied in a fixed order:
domain sequence (gradual, recurring) -> per-domain selection (n_examples, shuffle, label_shift)
-> mixing (mixed_domains) -> ordering (correlated) -> reset policy (reset_each_shift).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Literal, get_args

import numpy as np

from tta_bench.errors import ConfigError

Transform = Literal["continual", "reset_each_shift", "gradual", "mixed_domains",
                    "correlated", "label_shift", "recurring"]
TRANSFORMS: tuple[str, ...] = get_args(Transform)
GRADUAL_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)
MIN_CHUNK = 10  # every Dirichlet chunk must hold this many samples (NOTE/RoTTA procedure)


def parse_setting(setting: str) -> frozenset[str]:
    """Split `a+b` into validated transform names."""
    parts = frozenset(p.strip() for p in str(setting).split("+") if p.strip())
    unknown = sorted(parts - set(TRANSFORMS))
    if not parts or unknown:
        raise ConfigError(
            f"invalid data.setting {setting!r}: unknown {unknown}; use one or more of "
            f"{', '.join(TRANSFORMS)} joined by '+', e.g. mixed_domains+correlated"
        )
    return parts


@dataclass(frozen=True)
class StreamSpec:
    """Everything that determines a stream, taken from the `data` config and the run seed."""

    setting: str
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    n_examples: int
    seed: int
    shuffle: bool = True
    dirichlet_delta: float = 0.1
    rounds: int = 10
    label_shift_alpha: float = 1.0


@dataclass(frozen=True)
class StreamDomain:
    """One visit of a (corruption, severity) domain; `index` is its position in the stream."""

    index: int
    corruption: str
    severity: int
    round: int = 0

    @property
    def name(self) -> str:
        """Key such as `fog@5`, with the round for recurring streams."""
        return f"{self.corruption}@{self.severity}" + (f"#{self.round}" if self.round else "")


@dataclass
class Segment:
    """A contiguous part of the stream that is loaded and batched together."""

    domain_ids: np.ndarray  # per position: index into Stream.domains
    rows: np.ndarray  # per position: row of the base test set (file order)
    reset: bool = False  # reset the method before this segment

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Stream:
    """The ordered samples a method sees, with the domain of every sample."""

    domains: list[StreamDomain]
    segments: list[Segment]
    class_counts: np.ndarray = field(repr=False)  # (n_domains, n_classes) realised histogram

    @property
    def n_samples(self) -> int:
        """Total number of samples in the stream."""
        return sum(len(s) for s in self.segments)

    def batch_bounds(self, batch_size: int) -> Iterator[tuple[int, int, int]]:
        """(segment index, start, stop) of consecutive batches; the last of a segment may be short."""
        for k, segment in enumerate(self.segments):
            for start in range(0, len(segment), batch_size):
                yield k, start, min(start + batch_size, len(segment))

    def n_batches(self, batch_size: int) -> int:
        """Number of batches `batch_bounds` yields."""
        return sum(-(-len(s) // batch_size) for s in self.segments)


def domain_sequence(corruptions: tuple[str, ...], severities: tuple[int, ...], gradual: bool,
                    rounds: int) -> list[StreamDomain]:
    """Domain visits in order: every corruption at every severity (or 1..5..1), repeated `rounds` times."""
    sev = GRADUAL_SEVERITIES if gradual else tuple(severities)
    visits = [(c, s) for c in corruptions for s in sev]
    out = []
    for r in range(rounds):
        out += [StreamDomain(len(out) + i, c, s, r) for i, (c, s) in enumerate(visits)]
    return out


def select_rows(n_available: int, n_examples: int, shuffle: bool, seed: int) -> np.ndarray:
    """Rows of one domain: a seeded permutation (the same for every domain), then the first n."""
    n = n_available if n_examples is None or n_examples < 0 else min(n_examples, n_available)
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng(seed).permutation(n_available)[:n]


def label_shift_rows(rows: np.ndarray, labels: np.ndarray, alpha: float, num_classes: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Subsample `rows` without replacement to Dirichlet(alpha) class proportions, order kept."""
    props = rng.dirichlet(np.full(num_classes, alpha))
    y = labels[rows]
    avail = np.bincount(y, minlength=num_classes)
    # Largest total that the drawn proportions allow without replacement.
    with np.errstate(divide="ignore"):
        total = np.min(np.where(props > 0, avail / props, np.inf))
    want = np.floor(props * min(total, len(rows))).astype(int)
    keep = np.zeros(len(rows), dtype=bool)
    for c in np.flatnonzero(want):
        keep[rng.choice(np.flatnonzero(y == c), want[c], replace=False)] = True
    return rows[keep]


def dirichlet_order(labels: np.ndarray, num_classes: int, delta: float, rng: np.random.Generator,
                    max_seconds: float = 30.0) -> np.ndarray:
    """Permutation that makes labels temporally correlated (delta=0: sorted by label)."""
    n = len(labels)
    if delta <= 0:
        return np.argsort(labels + rng.random(n), kind="stable")
    deadline = time.monotonic() + max_seconds
    while True:
        chunks: list[list[int]] = [[] for _ in range(num_classes)]
        for c in range(num_classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_classes, delta))
            props = props * np.array([len(ch) < n / num_classes for ch in chunks])
            props = props / props.sum()
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for ch, part in zip(chunks, np.split(idx, cuts)):
                ch.extend(part.tolist())
        if min(len(ch) for ch in chunks) >= min(MIN_CHUNK, n // num_classes):
            return np.concatenate([rng.permutation(np.asarray(ch, dtype=np.int64)) for ch in chunks])
        if time.monotonic() > deadline:
            raise ConfigError(
                f"could not split {n} samples into {num_classes} Dirichlet chunks of at least "
                f"{MIN_CHUNK} (dirichlet_delta={delta}); use more samples or a larger delta"
            )


def build_stream(spec: StreamSpec, labels: np.ndarray, num_classes: int) -> Stream:
    """Compose the transforms named by `spec.setting` into a stream over the base test set."""
    parts = parse_setting(spec.setting)
    rounds = spec.rounds if "recurring" in parts else 1
    domains = domain_sequence(spec.corruptions, spec.severities, "gradual" in parts, rounds)
    base_rows = select_rows(len(labels), spec.n_examples, spec.shuffle, spec.seed)
    segments = []
    for d in domains:
        rows = base_rows
        if "label_shift" in parts:
            rng = np.random.default_rng([spec.seed, 1, d.index])
            rows = label_shift_rows(rows, labels, spec.label_shift_alpha, num_classes, rng)
        segments.append(Segment(np.full(len(rows), d.index, dtype=np.int64), rows))
    if "mixed_domains" in parts:
        merged_ids = np.concatenate([s.domain_ids for s in segments])
        merged_rows = np.concatenate([s.rows for s in segments])
        perm = np.random.default_rng([spec.seed, 2]).permutation(len(merged_rows))
        segments = [Segment(merged_ids[perm], merged_rows[perm])]
    if "correlated" in parts:
        for k, s in enumerate(segments):
            rng = np.random.default_rng([spec.seed, 3, k])
            perm = dirichlet_order(labels[s.rows], num_classes, spec.dirichlet_delta, rng)
            segments[k] = Segment(s.domain_ids[perm], s.rows[perm])
    for k, s in enumerate(segments):
        s.reset = k == 0 or "reset_each_shift" in parts
    counts = np.zeros((len(domains), num_classes), dtype=np.int64)
    for s in segments:
        np.add.at(counts, (s.domain_ids, labels[s.rows]), 1)
    return Stream(domains, segments, counts)
