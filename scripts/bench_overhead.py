"""Runner overhead: the runner's throughput divided by a bare loop over the same device tensors.

For `source` the bare loop is an eval-mode forward under no_grad; for `tent` it is forward,
entropy loss, backward and an Adam step on the same configured model. Both loops see the same
uint8 tensors already on the device, so the ratio isolates what the runner adds per batch
(metric accumulation, progress bookkeeping). Rounds alternate runner and bare loop; the median
of each is reported. Usage: python scripts/bench_overhead.py [--rounds 5] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tta_bench
from tta_bench.data.datasets import open_benchmark
from tta_bench.data.domains import BENCHMARK_CORRUPTIONS
from tta_bench.data.streams import StreamSpec, build_stream
from tta_bench.experiment import resolve_device
from tta_bench.methods.losses import softmax_entropy
from tta_bench.data.tensors import as_float
from tta_bench.runner import adapt_stream, open_segment, synchronize

BATCH = 200


def bare_loop(method: tta_bench.Method, segments: list[torch.Tensor], device: torch.device) -> float:
    """Images per second of the minimal loop for this method's computation."""
    model, opt, n = method.model, method.optimizer, 0
    synchronize(device)
    t0 = time.perf_counter()
    for images in segments:
        for start in range(0, len(images), BATCH):
            x = as_float(images[start : start + BATCH])
            if opt is None:
                with torch.no_grad():
                    model(x)
            else:
                softmax_entropy(model(x)).mean(0).backward()
                opt.step()
                opt.zero_grad()
            n += len(x)
    synchronize(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Measure both loops for source and tent and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    device = resolve_device(args.device)
    bench = open_benchmark("digits_c", args.data_root, BENCHMARK_CORRUPTIONS)
    stream = build_stream(StreamSpec("continual", BENCHMARK_CORRUPTIONS, (5,), 2000, seed=1), bench.labels, 10)
    segments = [torch.cat(list(open_segment(bench, stream, s, BATCH, device).batches)) for s in stream.segments]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{stream.n_samples} images, batch {BATCH}, {args.rounds} rounds")
    for name in ("source", "tent"):
        model = tta_bench.create_model("digits_c", args.model_dir, args.data_root, progress=False).to(device)
        method = tta_bench.create_method(name, model)
        runner, bare = [], []
        for _ in range(args.rounds):
            method.reset()
            result = adapt_stream(method, bench, stream, BATCH, 10, device, progress=False)
            runner.append(stream.n_samples / result.adapt_seconds)
            method.reset()
            bare.append(bare_loop(method, segments, device))
        r, b = float(np.median(runner)), float(np.median(bare))
        print(f"{name:<7} runner {r:8.0f} img/s   bare loop {b:8.0f} img/s   ratio {r / b:.3f}")


if __name__ == "__main__":
    main()
