"""The adaptation loop: stream batches through a method on the device and accumulate metrics.

Data of a segment is uploaded once as uint8 and converted per batch on the device. The per-batch
path has no host synchronisation: predictions, errors and metric sums stay on the device and are
read once per segment (one domain, or the whole stream when domains are mixed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from tta_bench.data.datasets import Benchmark
from tta_bench.data.streams import Segment, Stream
from tta_bench.methods.base import Method
from tta_bench.metrics import DomainMetrics
from tta_bench.progress import progress_bar


@dataclass
class DeviceSegment:
    """One segment's images (NCHW uint8), labels and domain ids on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    domain_ids: torch.Tensor


@dataclass
class StreamResult:
    """What the online pass measured."""

    per_domain: dict[str, np.ndarray]
    batch_errors: np.ndarray
    batch_sizes: np.ndarray
    batch_domains: np.ndarray
    adapt_seconds: float


def to_device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, H, W, 3) uint8 host array -> (n, 3, H, W) uint8 device tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch -> float32 in [0,1] (on the batch's device)."""
    return batch.float().div_(255.0)


def load_segment(bench: Benchmark, stream: Stream, segment: Segment, device: torch.device) -> DeviceSegment:
    """Read every domain of `segment` from disk in stream order and upload it."""
    images = None
    for d in np.unique(segment.domain_ids):
        pos = np.flatnonzero(segment.domain_ids == d)
        dom = stream.domains[d]
        block = bench.load(dom.corruption, dom.severity, segment.rows[pos])
        if images is None:
            images = np.empty((len(segment),) + block.shape[1:], dtype=np.uint8)
        images[pos] = block
    labels = torch.from_numpy(bench.labels[segment.rows]).to(device)
    return DeviceSegment(to_device_images(images, device), labels, torch.from_numpy(segment.domain_ids).to(device))


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
        data = load_segment(bench, stream, segment, device)
        if segment.reset:
            method.reset()
        synchronize(device)
        start_time = time.perf_counter()
        for start in range(0, len(segment), batch_size):
            stop = min(start + batch_size, len(segment))
            outputs = method(as_float(data.images[start:stop]))
            batch_errors[b] = metrics.update(outputs, data.labels[start:stop], data.domain_ids[start:stop],
                                             method.returns_probabilities)
            sizes[b], first_domain[b] = stop - start, segment.domain_ids[start]
            b += 1
            bar.update(stop - start)
        synchronize(device)
        adapt_seconds += time.perf_counter() - start_time
        summary = metrics.compute()  # the one host sync of this segment
        errors_so_far = np.nansum(summary["error"] * summary["n_samples"])
        bar.set_postfix(error=f"{100 * errors_so_far / summary['n_samples'].sum():.1f}%")
    bar.close()
    return StreamResult(metrics.compute(), batch_errors.cpu().numpy(), sizes, first_domain, adapt_seconds)


def frozen_error(method: Method, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Error of the method's current state on device data, without any update."""
    errors = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(images), batch_size):
        pred = method.predict(as_float(images[start : start + batch_size])).argmax(1)
        errors += pred.ne(labels[start : start + batch_size]).sum()
    return float(errors) / len(images)


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
