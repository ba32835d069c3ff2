"""Print the embedded benchmark's defining properties and check them (exit 1 if one fails).

Required (issue #2): >= 2,000 test images per domain; clean test error <= 5%; at severity 5 over
the 15 benchmark corruptions, source mean error >= 30% and norm at least 10 points lower.
Usage: python scripts/describe_embedded.py [--data-root data] [--model-dir models] [--device auto]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import tta_bench
from tta_bench.data.datasets import open_benchmark
from tta_bench.data.domains import BENCHMARK_CORRUPTIONS
from tta_bench.data.tensors import as_float, to_nchw
from tta_bench.experiment import resolve_device


def error(method: tta_bench.Method, x: torch.Tensor, y: torch.Tensor, batch_size: int = 200) -> float:
    """Online error of `method` over (x, y) in batches."""
    wrong = sum((method(x[i : i + batch_size]).argmax(1) != y[i : i + batch_size]).sum().item()
                for i in range(0, len(x), batch_size))
    return 100.0 * wrong / len(x)


def main() -> int:
    """Measure and print; non-zero exit when a property does not hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    tta_bench.create_model("digits_c", args.model_dir, args.data_root)  # generate and train on first use

    def fresh(method: str) -> tta_bench.Method:
        # Methods configure the model they wrap in place, so each gets its own copy.
        model = tta_bench.create_model("digits_c", args.model_dir, args.data_root, progress=False)
        return tta_bench.create_method(method, model.to(device))

    bench = open_benchmark("digits_c", args.data_root)
    clean_x, clean_y = bench.load_clean("test")
    clean_x = as_float(to_nchw(clean_x, device))
    clean_err = error(fresh("source"), clean_x, torch.from_numpy(clean_y).to(device))
    rows = []
    for c in BENCHMARK_CORRUPTIONS:
        x, y = (t.to(device) for t in tta_bench.load_domain("digits_c", c, 5, data_root=args.data_root))
        src, norm = error(fresh("source"), x, y), error(fresh("norm"), x, y)
        rows.append((c, len(y), src, norm))
    n_min = min(r[1] for r in rows)
    src_mean, norm_mean = np.mean([r[2] for r in rows]), np.mean([r[3] for r in rows])
    print(f"{'corruption (severity 5)':<24}{'images':>8}{'source %':>10}{'norm %':>9}")
    for c, n, s, b in rows:
        print(f"{c:<24}{n:>8}{s:>10.1f}{b:>9.1f}")
    print(f"{'mean':<24}{'':>8}{src_mean:>10.1f}{norm_mean:>9.1f}")
    checks = [
        (f"test images per domain {n_min} >= 2000", n_min >= 2000),
        (f"clean test error {clean_err:.1f}% <= 5%", clean_err <= 5.0),
        (f"source mean error {src_mean:.1f}% >= 30%", src_mean >= 30.0),
        (f"norm mean error {norm_mean:.1f}% <= source - 10 = {src_mean - 10:.1f}%", norm_mean <= src_mean - 10.0),
    ]
    for text, ok in checks:
        print(f"[{'ok' if ok else 'FAIL'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
