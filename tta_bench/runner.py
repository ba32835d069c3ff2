"""The adaptation loop: stream batches through a method on the device and accumulate metrics.

Data of a segment is uploaded once as uint8 (in-memory data sets) or streamed batch by batch from
JPEG-decoding worker processes (ImageNet-C), and converted per batch on the device. The per-batch
path has no host synchronisation: predictions, errors and metric sums stay on the device and are
read once per segment (one domain, or the whole stream when domains are mixed).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

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


@dataclass
class StreamPosition:
    """Where the online pass stands: segment index, samples of it done, batches done overall."""

    segment: int = 0
    offset: int = 0
    batch: int = 0


class StreamState:
    """Everything the online pass accumulates, so that a run can stop and continue exactly.

    Device metric sums and per-batch errors, host per-batch sizes and domains, the adaptation
    time and the position. `state_dict` holds only tensors and numbers, so it loads with
    `torch.load(weights_only=True)`.
    """

    def __init__(self, n_domains: int, num_classes: int, n_batches: int, device: torch.device):
        self.metrics = DomainMetrics(n_domains, num_classes, device)
        self.batch_errors = torch.zeros(n_batches, dtype=torch.float64, device=device)
        self.batch_sizes = np.zeros(n_batches, dtype=np.int64)
        self.batch_domains = np.zeros(n_batches, dtype=np.int64)
        self.adapt_seconds = 0.0
        self.position = StreamPosition()

    def state_dict(self) -> dict[str, Any]:
        """Copies of the tensors and the numbers of the state."""
        return {"metrics": self.metrics.state_dict(), "batch_errors": self.batch_errors.clone(),
                "batch_sizes": torch.from_numpy(self.batch_sizes.copy()),
                "batch_domains": torch.from_numpy(self.batch_domains.copy()),
                "adapt_seconds": self.adapt_seconds, "position": dataclasses.asdict(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` of a state of the same shape."""
        self.metrics.load_state_dict(state["metrics"])
        self.batch_errors.copy_(state["batch_errors"])
        self.batch_sizes[:] = state["batch_sizes"].numpy()
        self.batch_domains[:] = state["batch_domains"].numpy()
        self.adapt_seconds = float(state["adapt_seconds"])
        self.position = StreamPosition(**state["position"])

    def result(self) -> StreamResult:
        """The final measurements (one host copy)."""
        return StreamResult(self.metrics.compute(), self.batch_errors.cpu().numpy(), self.batch_sizes,
                            self.batch_domains, self.adapt_seconds)


class StopRequest(Protocol):
    """Polled once per batch (a Python attribute, no device work): set when a signal asks to stop."""

    signum: int | None


class Stopped(Exception):
    """The online pass stopped on request at a batch boundary, after handing its state to `on_boundary`."""

    def __init__(self, signum: int, position: StreamPosition):
        super().__init__(f"stopped by signal {signum} at {position}")
        self.signum, self.position = signum, position


# Called with the state after every segment, with the domain ids that segment finished and the metrics
# so far (`DomainMetrics.compute`), and once with (state, None, None) when the pass stops on request
# in the middle of a segment.
BoundaryCallback = Callable[[StreamState, Optional[np.ndarray], Optional[dict]], None]


def _adapt_segment(method: Method, data: DeviceSegment, segment: Segment, state: StreamState, bar: Any,
                   stop: StopRequest | None) -> None:
    """Adapt batch by batch on the rest of `segment` (from `state.position.offset`), or until a stop request."""
    start = 0
    for images, labels in labelled_batches(data):
        stop_at = start + len(images)
        outputs = method(as_float(images))
        b, offset = state.position.batch, state.position.offset
        state.batch_errors[b] = state.metrics.update(outputs, labels, data.domain_ids[start:stop_at],
                                                     method.returns_probabilities, method.pop_nonfinite_steps())
        state.batch_sizes[b], state.batch_domains[b] = stop_at - start, segment.domain_ids[offset]
        state.position = StreamPosition(state.position.segment, offset + stop_at - start, b + 1)
        bar.update(stop_at - start)
        start = stop_at
        if stop is not None and stop.signum is not None:
            return


def adapt_stream(method: Method, bench: Benchmark, stream: Stream, batch_size: int, num_classes: int,
                 device: torch.device, progress: bool = True, state: StreamState | None = None,
                 on_boundary: BoundaryCallback | None = None, stop: StopRequest | None = None) -> StreamResult:
    """Run the online pass: for each batch, predict-then-adapt and record metrics.

    Continues from `state` when given (a resumed run). After each segment `on_boundary` receives the
    state (e.g. to checkpoint it); when `stop` is set it is checked after every batch, and the pass
    hands the state to `on_boundary` and raises `Stopped`.
    """
    if state is None:
        state = StreamState(len(stream.domains), num_classes, stream.n_batches(batch_size), device)
    method.pop_nonfinite_steps()  # steps of a preparation (RMT's warm-up) are not part of the stream
    bar = progress_bar(progress, total=stream.n_samples, desc=method.name, unit="img",
                       initial=int(state.batch_sizes.sum()))
    for index in range(state.position.segment, len(stream.segments)):
        segment, offset = stream.segments[index], state.position.offset
        if segment.reset and offset == 0:
            method.reset()
        rest = Segment(segment.domain_ids[offset:], segment.rows[offset:], segment.reset)
        data = open_segment(bench, stream, rest, batch_size, device)
        synchronize(device)
        start_time = time.perf_counter()
        _adapt_segment(method, data, segment, state, bar, stop)
        synchronize(device)
        state.adapt_seconds += time.perf_counter() - start_time
        finished, summary = state.position.offset == len(segment), None
        if finished:
            state.position = StreamPosition(index + 1, 0, state.position.batch)
            summary = state.metrics.compute()  # the one host sync of this segment
            errors_so_far = np.nansum(summary["error"] * summary["n_samples"])
            bar.set_postfix(error=f"{100 * errors_so_far / summary['n_samples'].sum():.1f}%")
        if on_boundary is not None:
            on_boundary(state, np.unique(segment.domain_ids) if finished else None, summary)
        if stop is not None and stop.signum is not None:
            bar.close()
            raise Stopped(stop.signum, state.position)
    bar.close()
    return state.result()


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
