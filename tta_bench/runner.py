"""The adaptation loop: stream batches through a method on the device and accumulate metrics.

Data of a segment is uploaded once as uint8 (in-memory data sets) or streamed batch by batch from
JPEG-decoding worker processes (ImageNet-C), and converted per batch on the device. The per-batch
path has no host synchronisation: predictions, errors and metric sums stay on the device and are
read once per segment (one domain, or the whole stream when domains are mixed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from tta_bench.data.datasets import Benchmark
from tta_bench.data.streams import Segment, Stream
from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.methods.base import Method
from tta_bench.metrics import DomainMetrics
from tta_bench.progress import progress_bar


@dataclass
class DeviceSegment:
    """One segment on the device: labels, domain ids, and its uint8 NCHW image batches in order."""

    labels: torch.Tensor
    domain_ids: torch.Tensor
    batches: Iterator[torch.Tensor]


@dataclass
class StreamResult:
    """What the online pass measured."""

    per_domain: dict[str, np.ndarray]
    batch_errors: np.ndarray
    batch_sizes: np.ndarray
    batch_domains: np.ndarray
    adapt_seconds: float


def _host_images(bench: Benchmark, stream: Stream, segment: Segment) -> np.ndarray:
    """Images of every domain of `segment`, read from disk in stream order."""
    images = None
    for d in np.unique(segment.domain_ids):
        pos = np.flatnonzero(segment.domain_ids == d)
        dom = stream.domains[d]
        block = bench.load(dom.corruption, dom.severity, segment.rows[pos])
        if images is None:
            images = np.empty((len(segment),) + block.shape[1:], dtype=np.uint8)
        images[pos] = block
    return images


def open_segment(bench: Benchmark, stream: Stream, segment: Segment, batch_size: int,
                 device: torch.device) -> DeviceSegment:
    """Upload an in-memory segment at once, or start streaming a JPEG-folder segment."""
    labels = torch.from_numpy(bench.labels[segment.rows]).to(device)
    domain_ids = torch.from_numpy(segment.domain_ids).to(device)
    if bench.streams_from_disk:
        domains = [(d.corruption, d.severity) for d in stream.domains]
        batches = bench.stream_batches(domains, segment.domain_ids, segment.rows, batch_size, device)
        return DeviceSegment(labels, domain_ids, batches)
    images = to_nchw(_host_images(bench, stream, segment), device)
    return DeviceSegment(labels, domain_ids, slices(images, batch_size))


def slices(tensor: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of a device tensor; the last may be shorter."""
    return (tensor[start : start + batch_size] for start in range(0, len(tensor), batch_size))


def labelled_batches(data: DeviceSegment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batch pairs of a segment."""
    start = 0
    for images in data.batches:
        yield images, data.labels[start : start + len(images)]
        start += len(images)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (only CUDA queues work asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def adapt_stream(method: Method, bench: Benchmark, stream: Stream, batch_size: int, num_classes: int,
                 device: torch.device, progress: bool = True) -> StreamResult:
    """Run the online pass: for each batch, predict-then-adapt and record metrics."""
    metrics = DomainMetrics(len(stream.domains), num_classes, device)
    n_batches = stream.n_batches(batch_size)
    batch_errors = torch.zeros(n_batches, dtype=torch.float64, device=device)
    sizes, first_domain = np.zeros(n_batches, dtype=np.int64), np.zeros(n_batches, dtype=np.int64)
    adapt_seconds, b = 0.0, 0
    bar = progress_bar(progress, total=stream.n_samples, desc=method.name, unit="img")
    for segment in stream.segments:
        data = open_segment(bench, stream, segment, batch_size, device)
        if segment.reset:
            method.reset()
        synchronize(device)
        start_time = time.perf_counter()
        start = 0
        for images, labels in labelled_batches(data):
            stop = start + len(images)
            outputs = method(as_float(images))
            batch_errors[b] = metrics.update(outputs, labels, data.domain_ids[start:stop], method.returns_probabilities)
            sizes[b], first_domain[b] = stop - start, segment.domain_ids[start]
            bar.update(stop - start)
            b, start = b + 1, stop
        synchronize(device)
        adapt_seconds += time.perf_counter() - start_time
        summary = metrics.compute()  # the one host sync of this segment
        errors_so_far = np.nansum(summary["error"] * summary["n_samples"])
        bar.set_postfix(error=f"{100 * errors_so_far / summary['n_samples'].sum():.1f}%")
    bar.close()
    return StreamResult(metrics.compute(), batch_errors.cpu().numpy(), sizes, first_domain, adapt_seconds)


def frozen_error(method: Method, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Error of the method's current state over (uint8 images, labels) batches, without any update."""
    errors, n = None, 0
    for images, labels in batches:
        wrong = method.predict(as_float(images)).argmax(1).ne(labels).sum()
        errors = wrong if errors is None else errors + wrong
        n += len(labels)
    return float(errors) / n


@torch.no_grad()
def plain_forward_seconds(model: torch.nn.Module, batch: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one eval-mode forward of the source model on `batch` (float NCHW)."""
    model.eval()
    for _ in range(2):
        model(batch)
    times = []
    for _ in range(repeats):
        synchronize(batch.device)
        t0 = time.perf_counter()
        model(batch)
        synchronize(batch.device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
